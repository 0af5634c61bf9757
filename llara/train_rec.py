"""The command ``python -m llara.train_rec``, for example::

    python -m llara.train_rec --model all --dataset movielens --reuse --no-save

Its code lives in ``llara.recommenders.train_rec`` (llara/recommenders/train_rec.py); this file only keeps the command's name.
"""
from .recommenders.train_rec import main

if __name__ == "__main__":
    raise SystemExit(main())
