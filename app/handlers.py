"""Request handlers: check what the browser sent, call the library, shape the answer for the UI.

Every user mistake becomes a ``gr.Error`` with a sentence the person can act on; library ``ValueError``s are
passed through the same way (their messages are written for people). Nothing here decides anything about the
model: that lives in ``llara.serving.inference``.
"""
from __future__ import annotations

import math
import random
import sys

import gradio as gr
import pandas as pd

from llara.constants import MAX_SEED, MAX_TITLE_CHARS
from llara.data.search import MAX_QUERY_CHARS
from llara.model.decoders import DECODERS
from llara.serving.answers import ABLATIONS, ATTRIBUTION_METHODS, PROMPT_KINDS, Prediction
from llara.serving.inference import CANDIDATE_KINDS
from llara.serving.part_view import NEEDS_NEXT_HEAD, PART_COLUMNS, part_summary, part_table_rows

from .charts import chart_label, item_chart
from .state import Studio
from .wording import WORDS, Words, written_line

MAX_PICKS = 200
MAX_USER_ID_CHARS = 12  # the user-id textbox's max_length; the HTTP API does not enforce it
TOP_CHOICE = "the model's top choice"


def refuse(message: str) -> gr.Error:
    """The error a user mistake gets: its sentence in the UI, and one line in the server log (no traceback: the
    mistake is the user's, not the server's)."""
    print(f"[llara-studio] refused a request: {message[:200]}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def _labels(value, what: str, words: Words = WORDS["movie"]) -> list[str]:
    """A list of label strings from a dropdown value (gradio sends a list; the HTTP API may send anything)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise refuse(f"The {what} must be a list of {words.names}.")
    if len(value) > MAX_PICKS:
        raise refuse(f"Too many {what} ({len(value):,}); pick at most {MAX_PICKS}.")
    return list(value)


def to_items(studio: Studio, value, what: str = "") -> list[int]:
    """Item ids of labels, order kept; gr.Error naming the first label that is not in the catalog. ``what``: what
    the labels are, in messages (default: the history)."""
    what = what or studio.words.history
    labels = _labels(value, what, studio.words)
    unknown = [label for label in labels if len(label) > MAX_TITLE_CHARS or label not in studio.by_label]
    if unknown:
        shown = unknown[0][:80] + ("..." if len(unknown[0]) > 80 else "")
        raise refuse(f"Not in the catalog: {shown!r}. Pick {what} from the list.")
    return [studio.by_label[label] for label in labels]


def watched(studio: Studio, value) -> list[int]:
    """The history's item ids, order kept; at least one (every request starts from a history)."""
    items = to_items(studio, value)
    if not items:
        raise refuse(f"Pick at least one {studio.words.one}.")
    return items


def parse_seed(seed) -> int:
    if isinstance(seed, bool):  # JSON true/false over the HTTP API: float(True) would pass as 1
        raise refuse(f"The seed must be a whole number, got {str(seed).lower()}.")
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise refuse(f"The seed must be a whole number, got {str(seed)[:40]!r}.") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_SEED:
        raise refuse(f"The seed must be a whole number from 0 to {MAX_SEED:,}, got {str(seed)[:40]}.")
    return int(value)


def _choice(value, valid, what: str) -> None:
    """gr.Error unless ``value`` is one of ``valid`` (radio values can be anything over the HTTP API)."""
    if value not in valid:
        raise refuse(f"Unknown {what} {str(value)[:40]!r}; choose one of {', '.join(valid)}.")


def _call(fn, *args, **kwargs):
    """Run a library call, turning its input errors (``ValueError``s, ``UnknownTitle`` included) into messages."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        raise refuse(str(err)) from None


# ---- request state (gr.State: one per browser tab or API client session) ---------------------------------------

def _state(state) -> dict:
    """A copy of the session's request state: ``truth`` (the loaded test user's next item, or None) and ``shown``
    (the last prediction's request and the answers it showed). Anything else (a fresh session) starts empty."""
    state = dict(state) if isinstance(state, dict) else {}
    return {"truth": state.get("truth"), "shown": state.get("shown")}


def _request_key(items: list[int], cands: list[int], decode: str, ablation: str, seed: int) -> list:
    return [list(items), list(cands), decode, ablation, seed]


# ---- history and candidates ---------------------------------------------------------------------------------

def load_test_user(studio: Studio, user=None, seed=0, state=None) -> tuple[list[str], list[str], str, dict]:
    """A real test user: their history, 20 candidates with the true next movie among them, a line naming it, and
    the request state that remembers it."""
    samples = studio.dataset.test
    if user in (None, "", "random"):
        sample = random.Random().choice(samples)
    else:
        if len(str(user).strip()) > MAX_USER_ID_CHARS:
            raise refuse(f"The user id must be a number of at most {MAX_USER_ID_CHARS} digits, got "
                           f"{len(str(user)):,} characters.")
        try:
            user_id = int(str(user).strip())
        except (TypeError, ValueError):
            raise refuse(f"The user id must be a number, got {str(user)[:40]!r}.") from None
        matches = [s for s in samples if s.user == user_id]
        if not matches:
            ids = sorted(s.user for s in samples)
            raise refuse(f"User {user_id} is not a test user; the {len(ids)} test users have ids {ids[0]}..{ids[-1]}.")
        sample = matches[0]
    cands = _call(studio.predictor.draw_candidates, list(sample.history), parse_seed(seed), include=sample.target)
    truth = f"Test user {sample.user}: the true next {studio.words.item} was **{studio.labels[sample.target]}** (marked ★ below)."
    return ([studio.labels[i] for i in sample.history], [studio.labels[c] for c in cands], truth,
            {"truth": sample.target, "shown": None})


def draw_candidates(studio: Studio, history, seed=0, kind: str = "random", state=None) -> list[str]:
    """20 unseen candidates drawn with ``seed`` (``kind``: random, or hard); a loaded user's true next movie stays
    among them."""
    items = watched(studio, history)
    keep = true_item(state)
    if keep in items:
        keep = None
    _choice(kind, CANDIDATE_KINDS, "candidate set")
    return [studio.labels[c] for c in _call(studio.predictor.draw_candidates, items, parse_seed(seed), include=keep,
                                            kind=kind)]


def follow_history(studio: Studio, history, seed=0, kind: str = "random", state=None) -> list[str]:
    """The candidates after the history changed: a new draw for it (none while the history is empty, so clearing
    the history is not an error)."""
    if not _labels(history, studio.words.history, studio.words):
        return []
    return draw_candidates(studio, history, seed, kind, state)


def true_item(state) -> int | None:
    """The loaded test user's true next item (None when no user is loaded in this session)."""
    truth = _state(state)["truth"]
    return truth if isinstance(truth, int) else None


def search(studio: Studio, query: str, history) -> gr.Dropdown:
    """Catalog labels matching a free-text description (watched ones left out), best first: the matches become
    the choices of the matches dropdown (so picking them passes gradio's choice check) and are all picked."""
    if not isinstance(query, str) or not query.strip():
        raise refuse(studio.words.search_empty)
    if len(query) > MAX_QUERY_CHARS:
        raise refuse(f"The description is {len(query):,} characters; keep it under {MAX_QUERY_CHARS}.")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\udcff"): not text the encoder can read
        raise refuse("The description contains characters that are not valid Unicode text.") from None
    exclude = set(to_items(studio, history))
    hits = _call(studio.search().search, query, k=8, exclude=exclude)
    labels = [studio.labels[i] for i, _ in hits]
    return gr.Dropdown(choices=labels, value=labels)


def add_found(studio: Studio, history, found) -> list[str]:
    """Append the found titles to the history (watch order: they become the most recent)."""
    to_items(studio, history)
    to_items(studio, found, "matches")  # catalog labels only: the search's matches are
    history = _labels(history, studio.words.history, studio.words)
    added = history + [f for f in _labels(found, "matches", studio.words) if f not in history]
    if len(added) > MAX_PICKS:
        raise refuse(f"Too many {studio.words.history} ({len(added):,}); pick at most {MAX_PICKS}.")
    return added


# ---- predictions ---------------------------------------------------------------------------------------------

def _distribution(studio: Studio, answer, truth: int | None) -> dict[str, float]:
    """Scores turned into shares that sum to 1 over the candidates (softmax), keyed by label; ★ marks the truth.
    A decoded answer (generate / constrained) scores nothing else: its one movie gets the whole bar."""
    if answer is None:
        return {}
    ranked = answer.ranked or ([(answer.item, 0.0)] if answer.item is not None else [])
    if not ranked:
        return {}
    top = max(s for _, s in ranked)
    weights = [(i, math.exp(s - top)) for i, s in ranked]
    total = sum(w for _, w in weights)
    return {("★ " if i == truth else "") + studio.labels[i]: w / total for i, w in weights}


def _headline(studio: Studio, answer, truth: int | None) -> str:
    if answer is None:
        return f"*Not run: a text-only prompt without titles names no {studio.words.item}.*"
    if answer.item is None:
        return f"**Invalid answer:** {answer.text[:200]!r}\n\n{answer.note}"
    mark = ""
    if truth is not None:
        item = studio.words.item
        mark = f" ✅ the true next {item}" if answer.item == truth else f" ❌ not the true next {item}"
    # the recommender's answer names the recommender (e.g. gru4rec) as its decode
    how = DECODERS[answer.decode].how if answer.decode in DECODERS else f"{answer.decode} scores"
    notes = [answer.note] if answer.note else []
    if not answer.ranked:
        notes.append(f"decoding names one {studio.words.item} and scores no other, so the chart has one bar")
    note = f" ({'; '.join(notes)})" if notes else ""
    return f"### {studio.labels[answer.item]}{mark}\n{how}, {answer.seconds * 1000:.0f} ms{note}"


def summary(studio: Studio, result: Prediction, truth: int | None) -> str:
    picks = {k: a.item for k, a in result.answers.items() if k != "written"}  # the three panels
    agree = len({v for v in picks.values() if v is not None}) == 1 and None not in picks.values()
    busy = f"; {result.waited:.2f} s of it waiting for other requests" if result.waited >= 0.01 else ""
    parts = [f"Predicted in {result.seconds:.2f} s ({studio.precision or 'model'} weights, ablation: {result.ablation}"
             f"{busy})."]
    if "text" in picks:
        if None in (picks["text"], picks["hybrid"]):  # an invalid generated answer agrees with nothing
            parts.append("No comparison: a generated answer names none of the candidates.")
        else:
            parts.append("All three agree." if agree else ("Text-only and hybrid agree." if picks["text"] == picks["hybrid"]
                                                           else "Text-only and hybrid disagree."))
    if result.note:
        parts.append(result.note[0].upper() + result.note[1:] + ".")
    return " ".join(parts)


def predict(studio: Studio, history, candidates, decode: str = "rank", ablation: str = "none", seed=0, state=None):
    """Both prompts and the recommender: (text headline, text bars, hybrid headline, hybrid bars, recommender
    headline, recommender bars, summary, text prompt, hybrid prompt, slot table, request state)."""
    items = watched(studio, history)
    cands = to_items(studio, candidates, "candidates")
    if not cands:
        raise refuse("The candidate set is empty: draw candidates or pick some.")
    _choice(decode, studio.predictor.decodes, "decode mode")
    _choice(ablation, ABLATIONS, "ablation")
    seed = parse_seed(seed)
    result = _call(studio.predictor.predict, items, cands, decode, ablation, seed)
    state = _state(state)
    state["shown"] = {"request": _request_key(items, cands, decode, ablation, seed), "chosen": result.chosen()}
    known = true_item(state)
    text, hybrid, rec, written = (result.answers.get(k) for k in ("text", "hybrid", "recommender", "written"))
    said = "" if written is None or hybrid is None or hybrid.item is None else written_line(
        None if written.item is None else studio.labels[written.item], written.text, studio.labels[hybrid.item], studio.words)
    return (
        _headline(studio, text, known), _distribution(studio, text, known),
        _headline(studio, hybrid, known) + said, _distribution(studio, hybrid, known),
        _headline(studio, rec, known), _distribution(studio, rec, known),
        summary(studio, result, known),
        prompt_segments(result.prompts.get("text")), prompt_segments(result.prompts["hybrid"]),
        slot_table(studio, result.prompts["hybrid"]), state,
    )


# ---- part comparison ----------------------------------------------------------------------------------------

def compare_parts(studio: Studio, history, candidates, state=None):
    """The part comparison of the current request: (status line, table). A checkpoint without a next-item head gets
    a line saying the view needs one (and an empty table); bad input is refused as Predict refuses it."""
    if "next" not in studio.predictor.decodes:
        return f"*{NEEDS_NEXT_HEAD}*", pd.DataFrame(columns=PART_COLUMNS)
    items = watched(studio, history)
    cands = to_items(studio, candidates, "candidates")
    if not cands:
        raise refuse("The candidate set is empty: draw candidates or pick some.")
    result = _call(studio.predictor.compare_parts, items, cands)
    rows = part_table_rows(result, studio.labels, true_item(state))
    return part_summary(result), pd.DataFrame(rows, columns=PART_COLUMNS)


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


def slot_table(studio: Studio, prompt, att=None) -> pd.DataFrame:
    """One row per embedding slot of the hybrid prompt; with an attribution of that prompt, also each slot's share
    of it (``Attribution.slot_shares``; "-" where the method does not score slots)."""
    columns = ["slot", f"{studio.words.item} it carries", f"closest {studio.words.items} to it for the recommender (cosine)",
               "cosine to its title's token embeddings"]
    shares = att.slot_shares() if att is not None else {}
    rows = []
    for s in studio.predictor.slots(prompt):
        row = [s.part, studio.labels[s.item], ", ".join(f"{studio.labels[i]} ({v:.2f})" for i, v in s.neighbours),
               round(s.title_cosine, 2)]
        if att is not None:
            row.append(f"{shares[s.position]:.1%}" if s.position in shares else "-")
        rows.append(row)
    if att is not None:
        columns.append(f"share of the hybrid explanation ({att.method})")
    return pd.DataFrame(rows, columns=columns)


# ---- attributions --------------------------------------------------------------------------------------------

def attribute(studio: Studio, history, candidates, target: str = TOP_CHOICE, method: str = "deletion",
              ablation: str = "none", seed=0, decode: str = "rank", state=None):
    """Token highlighting of both prompts and a per-item bar chart (title vs embedding) for one candidate: the
    model's answer by default (the one the last prediction of this same request showed, without ranking again);
    and the slot table again, with each slot's share of the hybrid explanation."""
    items = watched(studio, history)
    cands = to_items(studio, candidates, "candidates")
    _choice(method, ATTRIBUTION_METHODS, "attribution method")
    _choice(ablation, ABLATIONS, "ablation")
    _choice(decode, studio.predictor.decodes, "decode mode")
    seed = parse_seed(seed)
    chosen = None
    if target not in (None, "", TOP_CHOICE):
        chosen = to_items(studio, [target], "candidate to explain")[0]
    shown = _state(state)["shown"] or {}
    same = shown.get("request") == _request_key(items, cands, decode, ablation, seed)
    result = _call(studio.predictor.explain, items, cands, method, ablation, seed, decode, target=chosen,
                   chosen=shown.get("chosen") if same else None)
    views, charts, lines = {}, {}, []
    for name in PROMPT_KINDS:
        att = result.attributions.get(name)
        if att is None:
            views[name] = [("(no text-only prompt for this ablation)", None)]
            # an empty plot draws no title: the label says why the chart is empty
            charts[name] = gr.BarPlot(value=None, title=None, label=f"{chart_label(name, studio.words)}: not run (this "
                                                                    "ablation's prompt lists no titles)")
            continue
        views[name] = att.words()
        answer = studio.labels[att.target]
        title = f"{name}: why {answer}" + (" (prompt in shuffled order)" if ablation == "shuffle" else "")
        charts[name] = item_chart(studio, att, title, list(result.history), chart_label(name, studio.words))
        lines.append(f"{name}: explaining **{answer}** ({'your choice' if chosen is not None else f'the model’s {result.decodes[name]} choice'}), "
                     f"{att.cost['seconds']:.1f} s")
    return (views["text"], views["hybrid"], charts["text"], charts["hybrid"], " · ".join(lines),
            slot_table(studio, result.prompts["hybrid"], result.attributions.get("hybrid")))


def target_choices(candidates) -> gr.Dropdown:
    return gr.Dropdown(choices=[TOP_CHOICE, *_labels(candidates, "candidates")], value=TOP_CHOICE)
