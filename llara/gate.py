"""The command ``python -m llara.gate``, for example::

    python -m llara.gate --checkpoint checkpoints/llara/movielens-gru4rec-lang-drop-5k --positions 10

Its code lives in ``llara.evaluation.gate`` (llara/evaluation/gate.py); this file only keeps the command's name.
"""
from .evaluation.gate import main

if __name__ == "__main__":
    raise SystemExit(main())
