"""The model layer: the base LLM and its CPU paths, the projector and item features, the LLaRA class (llara_model), its
decoders, and building / loading a checkpoint. Imports nothing above llara.prompt.
"""
