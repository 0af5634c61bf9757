"""The command ``python -m llara.cpu4bit``, for example::

    python -m llara.cpu4bit --rows 1,8,32,64,256

Its code lives in ``llara.model.cpu4bit`` (llara/model/cpu4bit.py); this file only keeps the command's name.
"""
from .model.cpu4bit import main

if __name__ == "__main__":
    raise SystemExit(main())
