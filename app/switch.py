"""The dataset switch: every event runs on its session's dataset, and switching refills the page.

Each session keeps its dataset in a ``gr.State``; the handlers get that dataset's Studio from ``Studios``, which
holds the models of one dataset at a time by default. A session whose models were released because another session
switched gets them loaded again on its next request, and is told so.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace

import gradio as gr

import app.charts as charts
import app.handlers as handlers

from .layout import page
from .state import LOAD_ERRORS, Studio, Studios


def session_studio(studios: Studios, dataset: str | None) -> Studio:
    """The Studio of the session's ``dataset``, loaded again (with a message saying why it takes a while) when
    another session's switch released it; a gr.Error with the reason when it cannot be served."""
    def say(name: str) -> None:
        gr.Info(f"Loading the {studios.offers[name].label} models again: this server holds one dataset's models at a "
                "time and another session switched datasets (this takes a while) ...")

    try:
        return studios.studio(dataset, on_load=say if studios.switchable else None)
    except LOAD_ERRORS as err:
        raise handlers.refuse(str(err)) from None


def _on_dataset(studios: Studios, handler: Callable, dataset: str | None, *inputs):
    return handler(session_studio(studios, dataset), *inputs)


def bind(studios: Studios, handler: Callable) -> Callable:
    """``handler(studio, *inputs)`` as an event function whose first input is the session's dataset. Named after
    ``handler`` (under which gradio and ZeroGPU report it); no ``__wrapped__``, so gradio counts the inputs of the
    bound function, not of ``handler``."""
    run = functools.partial(_on_dataset, studios, handler)
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        setattr(run, attr, getattr(handler, attr, None))
    return run


def pick_example(studio: Studio, index) -> list[str]:
    """The history of example ``index`` of the session's dataset (the example list changes with the dataset)."""
    examples = studio.examples
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(examples):
        raise handlers.refuse(f"No example {str(index)[:20]}; this dataset has {len(examples)}.")
    return list(examples[index])


def explaining(studios: Studios, dataset: str | None, method: str = "deletion"):
    """``charts.explaining`` in the words of the session's dataset (without loading its models)."""
    return charts.explaining(method, studios.words(dataset or studios.default))


def switch(studios: Studios, ui: SimpleNamespace, choice: str, current: str, progress=gr.Progress()) -> dict:  # noqa: B008 (gradio's way to ask for a progress bar)
    """Switch the session to dataset ``choice``: load its models (releasing another dataset's) and refill the page.
    A dataset that cannot be served leaves the session where it was, with a warning saying how to get it."""
    if choice == current:
        return {}
    offer = studios.offers.get(choice)
    problem = "Unknown dataset." if offer is None else offer.reason
    if problem is None and not studios.registry.holds(choice):
        progress(0, desc=f"Loading the {offer.label} models (the first time also converts them; the server holds "
                         "one dataset's models at a time) ...")
    if problem is None:
        try:
            studio = studios.studio(choice)
        except LOAD_ERRORS as err:
            problem = str(err)
    if problem is not None:
        gr.Warning(problem)
        return {ui.choice: gr.Radio(value=current)}
    return {ui.dataset: choice, **page(ui, studio)}
