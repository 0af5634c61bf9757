"""The prompt layer: the paper's prompts for a user (prompts) and their padded tensors (batch). Imports only the shared
leaves and llara.data.
"""
