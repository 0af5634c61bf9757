"""The command ``python -m llara.inference``, for example::

    python -m llara.inference --checkpoint checkpoints/llara/movielens-sasrec-curriculum-head \\
        --history "Toy Story|Star Wars|Fargo|Scream" --decode rank --precision nf4

Its code lives in ``llara.serving.inference`` (llara/serving/inference.py); this file only keeps the command's name.
"""
from .serving.inference import main

if __name__ == "__main__":
    raise SystemExit(main())
