"""The command ``python -m llara.train``, for example::

    python -m llara.train --output runs/text --mode text --max-train-samples 64 --batch-size 2 --precision nf4

Its code lives in ``llara.training.train`` (llara/training/train.py); this file only keeps the command's name.
"""
from .training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
