"""The command ``python -m llara.written``, for example::

    python -m llara.written --checkpoint checkpoints/llara/movielens-gru4rec-lang-follow \\
        --reference checkpoints/llara/movielens-gru4rec-lang-5k --positions 5

Its code lives in ``llara.evaluation.written`` (llara/evaluation/written.py); this file only keeps the command's name.
"""
from .evaluation.written import main

if __name__ == "__main__":
    raise SystemExit(main())
