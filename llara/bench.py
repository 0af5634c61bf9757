"""The command ``python -m llara.bench``, for example::

    python -m llara.bench --parts demo --precisions nf4

Its code lives in ``llara.measurement.bench`` (llara/measurement/bench.py); this file only keeps the command's name.
"""
from .measurement.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
