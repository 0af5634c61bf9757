"""The command ``python -m llara.results``, for example::

    python -m llara.results --reuse

Its code lives in ``llara.evaluation.results`` (llara/evaluation/results.py); this file only keeps the command's name.
"""
from .evaluation.results import main

if __name__ == "__main__":
    raise SystemExit(main())
