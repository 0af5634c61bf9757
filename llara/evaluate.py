"""The command ``python -m llara.evaluate``, for example::

    python -m llara.evaluate --checkpoint checkpoints/llara/movielens-sasrec-curriculum --prompt hybrid --decode rank --seeds 5

Its code lives in ``llara.evaluation.evaluate`` (llara/evaluation/evaluate.py); this file only keeps the command's name.
"""
from .evaluation.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
