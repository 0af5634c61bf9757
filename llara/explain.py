"""The command ``python -m llara.explain``, for example::

    python -m llara.explain --checkpoint checkpoints/llara/movielens-sasrec-curriculum \\
        --history "Toy Story|Heat|Fargo" --candidate "Casino" --level both

Its code lives in ``llara.measurement.explain`` (llara/measurement/explain.py); this file only keeps the command's name.
"""
from .measurement.explain import main

if __name__ == "__main__":
    raise SystemExit(main())
