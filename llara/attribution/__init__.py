"""The attribution layer: which parts of a prompt an answer rests on (methods), deletion curves, the slot inspector and
the prompt's layout. Imports nothing above llara.evaluation.
"""
