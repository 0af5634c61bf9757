"""The serving layer: the Predictor the demo calls (inference), its answers, batching (combiner), part comparison and
the demo's datasets. Imports nothing above llara.attribution.
"""
