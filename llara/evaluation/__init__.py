"""The evaluation layer: probes, the prompt-part and written-title measurements, the small-model baseline, the residual
gate and the results table. Imports nothing above llara.training.
"""
