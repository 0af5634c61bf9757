"""Memory across the demo's dataset switch: does the server hold only the models of the dataset on screen?

    python -m llara.bench --parts switch --precisions nf4     # MovieLens, LastFM, MovieLens, LastFM, MovieLens

The demo's registry (``llara.serving.demo_datasets.OneAtATime``, one pair of models held by default) loads each
dataset's two models the way the app does, in the order a visitor switching back and forth would ask for them, and
answers a few predicts after each load. The resident memory after each load and after its predicts is what the RSS
targets of the demo are read against: a switch that leaked the models it replaced would grow by one pair each time.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..serving.demo_datasets import DEMO_DATASETS, OneAtATime, release_memory, unavailable
from .concurrency import rss_mb, sample_requests


def switch_order(names: list[str], cycles: int) -> list[str]:
    """``names`` ``cycles`` times over, then the first again: the visitor comes back to where they started
    (``["movielens", "lastfm"]``, 2 -> movielens, lastfm, movielens, lastfm, movielens)."""
    if len(names) < 2 or cycles < 1:
        raise ValueError(f"a switch needs at least two datasets and one cycle, got {names} and {cycles}")
    return [*(names * cycles), names[0]]


def switch_memory(load: Callable[[str], Any], order: list[str], ask: Callable[[Any], None], keep: int = 1,
                  release: Callable[[], None] = release_memory) -> dict:
    """Load ``order``'s datasets one after another through a ``OneAtATime(load, keep)`` registry, calling
    ``ask(value)`` after each load; returns the seconds and RSS (MB) of every step and what the registry held.
    Nothing here keeps a reference to a loaded value past its step, so a dropped pair can really be freed."""
    registry: OneAtATime[Any] = OneAtATime(load, keep, release)
    start = rss_mb()
    steps: list[dict[str, Any]] = []
    for name in order:
        started = time.perf_counter()
        value = registry.get(name)
        loaded = time.perf_counter() - started
        after_load = rss_mb()
        started = time.perf_counter()
        ask(value)
        asked = time.perf_counter() - started
        del value  # the registry alone holds it now: the next switch may free it
        steps.append({"dataset": name, "load_s": loaded, "ask_s": asked, "rss_after_load_mb": after_load,
                      "rss_after_ask_mb": rss_mb(), "held": registry.held})
    return {"keep": keep, "rss_start_mb": start, "steps": steps,
            "rss_max_mb": max([start, *(s["rss_after_load_mb"] for s in steps), *(s["rss_after_ask_mb"] for s in steps)])}


def demo_switch(names: list[str], precision: str = "nf4", cycles: int = 2, predicts: int = 10,
                device: str = "cpu") -> dict:
    """``switch_memory`` over the demo's own datasets and checkpoints (``DEMO_DATASETS``), each loaded as the app
    loads it (its hybrid model and text-only twin) and asked ``predicts`` predicts from its first test users."""
    from ..serving.inference import Predictor

    for name in names:
        if name not in DEMO_DATASETS:
            raise ValueError(f"unknown demo dataset {name!r}; choose from {', '.join(DEMO_DATASETS)}")
        reason = unavailable(DEMO_DATASETS[name])
        if reason:
            raise ValueError(f"the switch bench needs every dataset it switches between: {reason}")

    def load(name: str) -> Predictor:
        spec = DEMO_DATASETS[name]
        text = str(spec.text_checkpoint) if spec.text_checkpoint else None
        return Predictor.load(str(spec.checkpoint), precision=precision, text_checkpoint=text, device=device)

    def ask(predictor: Predictor) -> None:
        for history, candidates in sample_requests(predictor, predicts):
            predictor.predict(history, candidates, predictor.decodes[0])

    return {**switch_memory(load, switch_order(names, cycles), ask), "precision": precision, "predicts": predicts}


def format_switch(res: dict | None) -> list[str]:
    """Markdown lines for a ``demo_switch`` result: one row per step, the demo's RSS targets beside them."""
    if not res:
        return []
    lines = ["", f"| dataset switch ({res['precision']}, {res['predicts']} predicts after each load, at most "
             f"{res['keep']} pair held) | load (s) | RSS after load (MB) | RSS after predicts (MB) | held |",
             "|---|---|---|---|---|"]
    for i, s in enumerate(res["steps"], 1):
        lines.append(f"| {i}. {s['dataset']} | {s['load_s']:.1f} | {s['rss_after_load_mb']:,.0f} | "
                     f"{s['rss_after_ask_mb']:,.0f} | {', '.join(s['held'])} |")
    lines.append(f"RSS at start {res['rss_start_mb']:,.0f} MB, highest {res['rss_max_mb']:,.0f} MB "
                 "(targets: ≤ 1,000 after start, ≤ 1,500 after requests)")
    return lines
