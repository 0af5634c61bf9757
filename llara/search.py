"""The command ``python -m llara.search``, for example::

    python -m llara.search "a 1990s crime thriller" --top 5

Its code lives in ``llara.data.search`` (llara/data/search.py); this file only keeps the command's name.
"""
from .data.search import main

if __name__ == "__main__":
    raise SystemExit(main())
