"""The command ``python -m llara.small_model``, for example::

    python -m llara.small_model --json docs/results/small/all-positions.json

Its code lives in ``llara.evaluation.small_model`` (llara/evaluation/small_model.py); this file only keeps the command's name.
"""
from .evaluation.small_model import main

if __name__ == "__main__":
    raise SystemExit(main())
