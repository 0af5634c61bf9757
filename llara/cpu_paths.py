"""The command ``python -m llara.cpu_paths``, for example::

    python -m llara.cpu_paths

Its code lives in ``llara.measurement.cpu_paths`` (llara/measurement/cpu_paths.py); this file only keeps the command's name.
"""
from .measurement.cpu_paths import main

if __name__ == "__main__":
    raise SystemExit(main())
