"""The training layer: the curriculum, the run's configuration and batches, warm starts and the training command
(train). Imports nothing above llara.model.
"""
