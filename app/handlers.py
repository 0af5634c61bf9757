"""Request handlers: check what the browser sent, call the library, shape the answer for the UI.

Every user mistake becomes a ``gr.Error`` with a sentence the person can act on; library ``ValueError``s are
passed through the same way (their messages are written for people). Nothing here decides anything about the
model: that lives in ``llara.inference``.
"""
from __future__ import annotations

import math
import random

import gradio as gr
import pandas as pd

from llara.inference import ABLATIONS, ATTRIBUTION_METHODS, MAX_SEED, Prediction
from llara.search import MAX_QUERY_CHARS

from .state import Studio

MAX_LABEL_CHARS = 300  # longer than any catalog label: anything longer is not one
MAX_PICKS = 200
MAX_USER_ID_CHARS = 12  # the user-id textbox's max_length; the HTTP API does not enforce it
TOP_CHOICE = "the model's top choice"


def _labels(value, what: str) -> list[str]:
    """A list of label strings from a dropdown value (gradio sends a list; the HTTP API may send anything)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise gr.Error(f"The {what} must be a list of movie titles.")
    if len(value) > MAX_PICKS:
        raise gr.Error(f"Too many {what} ({len(value):,}); pick at most {MAX_PICKS}.")
    return list(value)


def to_items(studio: Studio, value, what: str = "watched movies") -> list[int]:
    """Item ids of labels, order kept; gr.Error naming the first label that is not in the catalog."""
    labels = _labels(value, what)
    unknown = [label for label in labels if len(label) > MAX_LABEL_CHARS or label not in studio.by_label]
    if unknown:
        shown = unknown[0][:80] + ("..." if len(unknown[0]) > 80 else "")
        raise gr.Error(f"Not in the catalog: {shown!r}. Pick {what} from the list.")
    return [studio.by_label[label] for label in labels]


def parse_seed(seed) -> int:
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"The seed must be a whole number, got {str(seed)[:40]!r}.") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_SEED:
        raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED:,}, got {str(seed)[:40]}.")
    return int(value)


def _choice(value, valid, what: str) -> None:
    """gr.Error unless ``value`` is one of ``valid`` (radio values can be anything over the HTTP API)."""
    if value not in valid:
        raise gr.Error(f"Unknown {what} {str(value)[:40]!r}; choose one of {', '.join(valid)}.")


def _call(fn, *args, **kwargs):
    """Run a library call, turning its input errors into messages in the UI."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError) as err:
        raise gr.Error(str(err.args[0] if err.args else err)) from None


# ---- history and candidates ---------------------------------------------------------------------------------

def load_test_user(studio: Studio, user=None, seed=0) -> tuple[list[str], list[str], str]:
    """A real test user: their history, 20 candidates with the true next movie among them, and a line naming it."""
    samples = studio.dataset.test
    if user in (None, "", "random"):
        sample = random.Random().choice(samples)
    else:
        if len(str(user).strip()) > MAX_USER_ID_CHARS:
            raise gr.Error(f"The user id must be a number of at most {MAX_USER_ID_CHARS} digits, got "
                           f"{len(str(user)):,} characters.")
        try:
            user_id = int(str(user).strip())
        except (TypeError, ValueError):
            raise gr.Error(f"The user id must be a number, got {str(user)[:40]!r}.") from None
        matches = [s for s in samples if s.user == user_id]
        if not matches:
            ids = sorted(s.user for s in samples)
            raise gr.Error(f"User {user_id} is not a test user; the {len(ids)} test users have ids {ids[0]}..{ids[-1]}.")
        sample = matches[0]
    cands = _call(studio.predictor.draw_candidates, list(sample.history), parse_seed(seed), include=sample.target)
    truth = f"Test user {sample.user}: the true next movie was **{studio.labels[sample.target]}** (marked ★ below)."
    return [studio.labels[i] for i in sample.history], [studio.labels[c] for c in cands], truth


def draw_candidates(studio: Studio, history, seed=0, truth: str = "") -> list[str]:
    """20 unseen candidates drawn with ``seed``; a loaded user's true next movie stays among them."""
    items = to_items(studio, history)
    keep = true_item(studio, truth)
    if keep in items:
        keep = None
    return [studio.labels[c] for c in _call(studio.predictor.draw_candidates, items, parse_seed(seed), include=keep)]


def true_item(studio: Studio, truth: str | None) -> int | None:
    """The item named in bold in the truth line of a loaded test user (None when no user is loaded)."""
    if not isinstance(truth, str) or "**" not in truth:  # the HTTP API may send anything here
        return None
    label = truth.split("**")[1]
    return studio.by_label.get(label)


def search(studio: Studio, query: str, history) -> "gr.Dropdown":
    """Catalog labels matching a free-text description (watched ones left out), best first: the matches become
    the choices of the matches dropdown (so picking them passes gradio's choice check) and are all picked."""
    if not isinstance(query, str) or not query.strip():
        raise gr.Error("Describe a movie first, e.g. 'a heist thriller in Los Angeles'.")
    if len(query) > MAX_QUERY_CHARS:
        raise gr.Error(f"The description is {len(query):,} characters; keep it under {MAX_QUERY_CHARS}.")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\udcff"): not text the encoder can read
        raise gr.Error("The description contains characters that are not valid Unicode text.") from None
    exclude = set(to_items(studio, history))
    hits = _call(studio.search().search, query, k=8, exclude=exclude)
    labels = [studio.labels[i] for i, _ in hits]
    return gr.Dropdown(choices=labels, value=labels)


def add_found(history, found) -> list[str]:
    """Append the found titles to the history (watch order: they become the most recent)."""
    history = _labels(history, "watched movies")
    added = history + [f for f in _labels(found, "matches") if f not in history]
    if len(added) > MAX_PICKS:
        raise gr.Error(f"Too many watched movies ({len(added):,}); pick at most {MAX_PICKS}.")
    return added


# ---- predictions ---------------------------------------------------------------------------------------------

def _distribution(studio: Studio, ranked: list[tuple[int, float]], truth: int | None) -> dict[str, float]:
    """Scores turned into shares that sum to 1 over the candidates (softmax), keyed by label; ★ marks the truth."""
    if not ranked:
        return {}
    top = max(s for _, s in ranked)
    weights = [(i, math.exp(s - top)) for i, s in ranked]
    total = sum(w for _, w in weights)
    return {("★ " if i == truth else "") + studio.labels[i]: w / total for i, w in weights}


def _headline(studio: Studio, answer, truth: int | None) -> str:
    if answer is None:
        return "*Not run: a text-only prompt without titles names no movie.*"
    if answer.item is None:
        return f"**Invalid answer:** {answer.text[:200]!r}\n\n{answer.note}"
    mark = ""
    if truth is not None:
        mark = " ✅ the true next movie" if answer.item == truth else " ❌ not the true next movie"
    how = {"rank": "title likelihood", "head": "candidate head", "constrained": "constrained decoding",
           "generate": "greedy generation", "next": "next-item head (the LLM alone)",
           "residual": "recommender + the LLM's learned correction"}.get(answer.decode, answer.decode)
    note = f" ({answer.note})" if answer.note else ""
    return f"### {studio.labels[answer.item]}{mark}\n{how}, {answer.seconds * 1000:.0f} ms{note}"


def summary(studio: Studio, result: Prediction, truth: int | None) -> str:
    picks = {k: a.item for k, a in result.answers.items()}
    agree = len({v for v in picks.values() if v is not None}) == 1 and None not in picks.values()
    parts = [f"Predicted in {result.seconds:.2f} s ({studio.precision or 'model'} weights, ablation: {result.ablation})."]
    if "text" in picks:
        parts.append("All three agree." if agree else
                     ("Text-only and hybrid agree." if picks["text"] == picks["hybrid"] else "Text-only and hybrid disagree."))
    if result.note:
        parts.append(result.note[0].upper() + result.note[1:] + ".")
    return " ".join(parts)


def predict(studio: Studio, history, candidates, decode: str = "rank", ablation: str = "none", seed=0, truth: str = ""):
    """Both prompts and the recommender: (text headline, text bars, hybrid headline, hybrid bars, recommender
    headline, recommender bars, summary, text prompt, hybrid prompt, slot table)."""
    items = to_items(studio, history)
    if not items:
        raise gr.Error("Pick at least one watched movie.")
    cands = to_items(studio, candidates, "candidates")
    if not cands:
        raise gr.Error("The candidate set is empty: draw candidates or pick some.")
    _choice(decode, studio.predictor.decodes, "decode mode")
    _choice(ablation, ABLATIONS, "ablation")
    result = _call(studio.predictor.predict, items, cands, decode, ablation, parse_seed(seed))
    known = true_item(studio, truth)
    text, hybrid, rec = (result.answers.get(k) for k in ("text", "hybrid", "recommender"))
    return (
        _headline(studio, text, known), _distribution(studio, text.ranked if text else [], known),
        _headline(studio, hybrid, known), _distribution(studio, hybrid.ranked, known),
        _headline(studio, rec, known) + f" ({rec.decode})", _distribution(studio, rec.ranked, known),
        summary(studio, result, known),
        prompt_segments(result.prompts.get("text")), prompt_segments(result.prompts["hybrid"]),
        slot_table(studio, result.prompts["hybrid"]),
    )


def prompt_segments(prompt) -> list[tuple[str, str | None]]:
    """The prompt text cut into plain text and labelled slots, for gr.HighlightedText."""
    if prompt is None:
        return [("(no text-only prompt for this ablation)", None)]
    from llara.constants import CANDIDATE_TOKEN, HISTORY_TOKEN, PLACEHOLDER_TOKEN, USER_TOKEN

    names = {HISTORY_TOKEN: "history slot", CANDIDATE_TOKEN: "candidate slot", PLACEHOLDER_TOKEN: "placeholder",
             USER_TOKEN: "user slot"}
    out: list[tuple[str, str | None]] = []
    text = prompt.text
    while text:
        hits = [(text.find(t), t) for t in names if t in text]
        if not hits:
            out.append((text, None))
            break
        pos, tok = min(hits)
        if pos:
            out.append((text[:pos], None))
        out.append((tok, names[tok]))
        text = text[pos + len(tok):]
    return out


def slot_table(studio: Studio, prompt) -> pd.DataFrame:
    rows = [[s.part, studio.labels[s.item], round(s.norm, 2), ", ".join(f"{t} ({v:.2f})" for t, v in s.nearest)]
            for s in studio.predictor.slots(prompt)]
    return pd.DataFrame(rows, columns=["slot", "item it carries", f"norm (tokens ≈ {studio.predictor.token_norm:.2f})",
                                       "nearest vocabulary tokens (cosine)"])


# ---- attributions --------------------------------------------------------------------------------------------

def attribute(studio: Studio, history, candidates, target: str = TOP_CHOICE, method: str = "grad_x_input",
              ablation: str = "none", seed=0, decode: str = "rank"):
    """Token highlighting of both prompts and a per-item bar chart (title vs embedding) for one candidate."""
    items = to_items(studio, history)
    if not items:
        raise gr.Error("Pick at least one watched movie.")
    cands = to_items(studio, candidates, "candidates")
    _choice(method, ATTRIBUTION_METHODS, "attribution method")
    _choice(ablation, ABLATIONS, "ablation")
    _choice(decode, studio.predictor.decodes, "decode mode")
    chosen = None
    if target not in (None, "", TOP_CHOICE):
        chosen = to_items(studio, [target], "candidate to explain")[0]
        if chosen not in cands:
            raise gr.Error(f"{target[:80]!r} is not among the candidates: pick one of them to explain.")
    p = studio.predictor
    history_items, _ = _call(p.clean_history, items)
    prompts = _call(p.prompts, history_items, _call(p.check_candidates, history_items, cands), ablation, parse_seed(seed))
    views, rows, lines = {}, [], []
    for name in ("text", "hybrid"):
        if name not in prompts:
            views[name] = [("(no text-only prompt for this ablation)", None)]
            continue
        result = _call(p.attribute, prompts[name], method, chosen, blank=name == "hybrid" and ablation == "no-embeddings",
                       decode=decode)
        views[name] = result.highlighted()
        for it in result.items:
            rows.append([f"{name}: {it.title[:40]}", "title", it.title_score])
            if it.embedding_score is not None:
                rows.append([f"{name}: {it.title[:40]}", "embedding", it.embedding_score])
        lines.append(f"{name}: explaining **{studio.labels[result.target]}** ({'your choice' if chosen is not None else f'the model’s {decode} choice'}), "
                     f"{result.cost['seconds']:.1f} s")
    bars = pd.DataFrame(rows, columns=["item", "part", "effect on log-likelihood"])
    return views["text"], views["hybrid"], bars, " · ".join(lines)


def target_choices(candidates) -> "gr.Dropdown":
    return gr.Dropdown(choices=[TOP_CHOICE, *_labels(candidates, "candidates")], value=TOP_CHOICE)
