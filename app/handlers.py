"""Request handlers: validate what the browser sent, call the library, shape the answer for the UI."""
from __future__ import annotations

import random

import gradio as gr

from llara.data import MAX_HISTORY

from .state import Studio


def parse_history(studio: Studio, labels: list[str] | None) -> tuple[list[int], str]:
    """Item ids of the picked labels (watch order kept) and a note for the user; gr.Error on bad input."""
    if not labels:
        raise gr.Error("Pick at least one watched movie.")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise gr.Error("The history must be a list of movie titles.")
    unknown = [label for label in labels if label not in studio.by_label]
    if unknown:
        raise gr.Error(f"Not in the catalog: {', '.join(repr(u[:80]) for u in unknown[:3])}")
    items = list(dict.fromkeys(studio.by_label[label] for label in labels))  # duplicates once, first position kept
    note = ""
    if len(items) > MAX_HISTORY:
        note = f"Only the {MAX_HISTORY} most recent of the {len(items)} picked movies are used, as in the paper."
        items = items[-MAX_HISTORY:]
    return items, note


def recommend(studio: Studio, labels: list[str] | None, model_name: str, k: int = 10) -> tuple[list[list], str]:
    """Top-``k`` next movies from one recommender: table rows ``[rank, movie, score]`` and a status line."""
    if model_name not in studio.recommenders:
        raise gr.Error(f"Unknown recommender {model_name!r}; choose one of {', '.join(studio.recommenders)}.")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise gr.Error("The number of recommendations must be a whole number.") from None
    if not 1 <= k <= 50:
        raise gr.Error("Ask for between 1 and 50 recommendations.")
    items, note = parse_history(studio, labels)
    top = studio.recommenders[model_name].recommend(items, k=k)
    rows = [[rank, studio.labels[item], round(score, 3)] for rank, (item, score) in enumerate(top, start=1)]
    status = f"{model_name} over all {studio.dataset.n_items:,} movies, given {len(items)} watched. {note}".strip()
    return rows, status


def load_test_user(studio: Studio, user: str | int | None = None) -> tuple[list[str], str]:
    """A real test user of the paper's split: their history labels and a line naming the true next movie."""
    samples = studio.dataset.test
    if user in (None, "", "random"):
        sample = random.Random().choice(samples)
    else:
        try:
            user_id = int(user)
        except (TypeError, ValueError):
            raise gr.Error(f"User id must be a number, got {str(user)[:40]!r}.") from None
        matches = [s for s in samples if s.user == user_id]
        if not matches:
            ids = sorted(s.user for s in samples)
            raise gr.Error(f"User {user_id} is not a test user; test users are {ids[0]}..{ids[-1]} (95 of them).")
        sample = matches[0]
    history = [studio.labels[i] for i in sample.history]
    return history, f"Test user {sample.user}: the true next movie was **{studio.labels[sample.target]}**."
