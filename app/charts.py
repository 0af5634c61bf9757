"""The explanation's charts: what the per-item bar chart shows for each attribution method, in the words of the
dataset on screen (UI shaping only; the attributions come from ``llara.serving.inference``)."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .state import Studio
from .wording import WORDS, Words


def explaining(method: str = "deletion", words: Words = WORDS["movie"]):
    """What the attribution outputs show while an explanation runs: nothing of the previous one."""
    slow = {"ablation": f" (item removal runs one pass per {words.one} part: 10-20 s)",
            "deletion": f" (one pass per {words.one})"}.get(method, "")
    return None, None, None, None, f"*Explaining both prompts{slow} ...*"


def axis(method: str, words: Words) -> str:
    """The per-item chart's value axis: what ``method`` measures."""
    return {"ablation": "log-likelihood change when the part is removed", "grad_x_input": "summed gradient × input",
            "ig": "summed integrated gradients",
            "deletion": f"score lost when the {words.item} is removed"}[method]


PART_COLOURS = {"title": ("orange", "#f97316"), "embedding": ("blue", "#3b82f6")}  # the parts an item splits into


def chart_label(prompt: str, words: Words) -> str:
    """The label of the per-item chart of ``prompt`` ("text" / "hybrid")."""
    return f"Per {words.one}: {'text-only' if prompt == 'text' else 'hybrid'} prompt"


def item_chart(studio: Studio, att, title: str, history: list[int], label: str) -> gr.BarPlot:
    """One bar per watched movie in watch order (numbered by its place in ``history``, also when the prompt listed
    them shuffled), split into its title's and its embedding's effect where the method measures both (the label
    then names their colours), with the axis named after what the method measures."""
    place = {item: k for k, item in enumerate(history, start=1)}
    w = studio.words
    rows, order = [], []
    for it in sorted(att.items, key=lambda it: place.get(it.item, len(place) + 1)):
        bar = f"{place.get(it.item, '?')}. {studio.labels[it.item][:40]}"
        order.append(bar)
        parts = [(part, value) for part, value in (("title", it.title_score), ("embedding", it.embedding_score))
                 if value is not None]
        for part, value in parts or [(f"whole {w.item}", it.total)]:  # deletion measures the item as one
            rows.append([bar, part, value])
    frame = pd.DataFrame(rows, columns=[w.one, "part", axis(att.method, w)])
    split = [p for p in PART_COLOURS if p in set(frame["part"])]
    # gradio draws a colour legend under the angled movie names, where the plot's box cuts it off: the label names
    # the colours instead (fixed by color_map); one part per movie (deletion, or titles only) gets one colour
    colours = {}
    if len(split) > 1:
        label += " (" + ", ".join(f"{PART_COLOURS[p][0]}: {p}" for p in split) + ")"
        colours = {"color": "part", "color_map": {p: PART_COLOURS[p][1] for p in split}, "colors_in_legend": []}
    return gr.BarPlot(value=frame, x=w.one, y=axis(att.method, w), sort=order, title=title,
                      y_title=axis(att.method, w), x_label_angle=-35, label=label, **colours)
