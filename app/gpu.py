"""Hugging Face ZeroGPU: the handlers that run the model ask for a GPU, where the ``spaces`` package is installed.

On a ZeroGPU Space (Gradio SDK only) a GPU is attached only while a function decorated with ``spaces.GPU`` runs;
``spaces`` must be imported before CUDA is touched (it then emulates CUDA outside those functions, so the model is
placed on ``cuda`` at start-up, as the Hub's ZeroGPU guide asks). Everywhere else ``spaces.GPU`` returns the
function unchanged, and where the package is not installed (this project's own environment) :func:`on_gpu` does
the same without it.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

GPU_SECONDS = 120  # the longest one request may hold the GPU: an attribution by item ablation on a long prompt


def spaces_module() -> ModuleType | None:
    """The ``spaces`` package, imported (app.py calls this before the model loads), or None where it is absent."""
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def on_gpu(handler: Callable) -> Callable:
    """``spaces.GPU(handler)`` where ``spaces`` imports, else ``handler`` itself.

    Pass the handler already bound to the loaded studio (``functools.partial(handlers.predict, studio)``): ZeroGPU
    runs it in a process forked from this one, where the studio already is, and sends it only the request's inputs.
    A partial gets the wrapped function's name first, under which ZeroGPU reports it."""
    spaces = spaces_module()
    if spaces is None:
        return handler
    if isinstance(handler, functools.partial) and not hasattr(handler, "__name__"):
        for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
            setattr(handler, attr, getattr(handler.func, attr, None))
    return spaces.GPU(duration=GPU_SECONDS)(handler)
