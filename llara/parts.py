"""The command ``python -m llara.parts``, for example::

    python -m llara.parts --checkpoint checkpoints/llara/movielens-gru4rec-lang-drop-5k --json docs/results/parts.json

Its code lives in ``llara.evaluation.parts`` (llara/evaluation/parts.py); this file only keeps the command's name.
"""
from .evaluation.parts import main

if __name__ == "__main__":
    raise SystemExit(main())
