"""What each part of the hybrid prompt does to one request's answer: the part comparison the demo shows.

A hybrid prompt has up to three parts (``llara.evaluation.parts``): the titles, the item slots and the user token (checkpoints
trained with ``--user-token``). :func:`compare_parts` answers the full prompt and every variant of
``llara.evaluation.parts.variants`` (each part removed, each part alone, nothing) with the LLM's next-item head alone (decode
``next``: the recommender's own score would hide what the prompt changes), in one batched pass under the
predictor's lock, beside the text-only model's answer. Each row gets its answer, its ranking of the candidates
(log-softmax over them) and how far that ranking moved from the full prompt's (:func:`changed_share`).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..evaluation.parts import build_variant, model_parts, variants
from ..model.decoders import available
from ..model.llara_model import rank_candidates
from .answers import PartComparison, PartRow

if TYPE_CHECKING:
    from ..model.llara_model import LLaRA

TEXT_ROW = "text-only model"
PART_LABELS = {"titles": "titles", "items": "item slots", "user": "user token"}
NEEDS_NEXT_HEAD = ("The part comparison needs a checkpoint with a next-item head (trained with --next-weight > 0): "
                   "this one has none, so its prompt parts cannot be compared.")
CHANGED_MEANING = ("the share of candidate pairs that the row orders the other way round from the full prompt "
                   "(a normalised Kendall tau distance: 0% the same ranking, about 50% an unrelated one, 100% reversed)")


def changed_share(reference: list[int], ranking: list[int]) -> float:
    """The share of item pairs that ``ranking`` orders the other way round from ``reference`` (both best first, over
    the same items): 0 for the same order, 1 for the reverse."""
    where = {item: k for k, item in enumerate(ranking)}
    pos = [where[item] for item in reference]
    n = len(pos)
    if n < 2:
        return 0.0
    swapped = sum(pos[a] > pos[b] for a in range(n) for b in range(a + 1, n))
    return swapped / (n * (n - 1) / 2)


def kept_label(kept: tuple[str, ...]) -> str:
    """The parts a prompt keeps, as the UI names them."""
    return " + ".join(PART_LABELS[p] for p in kept) if kept else "none (the template's words and neutral slots)"


def compare_parts(predictor, history: list[int], candidates: list[int]) -> PartComparison:
    """``predictor``: a ``llara.serving.inference.Predictor`` (not imported here: it imports this module).

    The full hybrid prompt, each variant with parts removed and the text-only model on one request, checked as
    ``Predictor.predict`` checks it. One ``all_item_scores`` pass per model (the text-only prompt joins the hybrid
    variants' batch when the main model answers it)."""
    started = time.perf_counter()
    model = predictor.model
    if not available(model, "next"):
        raise ValueError(NEEDS_NEXT_HEAD)
    history, note = predictor.clean_history(history)
    candidates = predictor.check_candidates(history, candidates)
    h, c = tuple(history), tuple(candidates)
    parts = model_parts(model)
    removed = variants(parts)  # "full" first
    prompts = {name: build_variant(model, h, c, True, gone) for name, gone in removed.items()}
    text_model = predictor.text_model or model
    if available(text_model, "next"):
        prompts[TEXT_ROW] = build_variant(text_model, h, c, False, frozenset())
    groups: dict[int, tuple[LLaRA, list[str]]] = {}
    for name, prompt in prompts.items():
        m = predictor.model_for(prompt)
        groups.setdefault(id(m), (m, []))[1].append(name)
    ranked: dict[str, list[tuple[int, float]]] = {}
    queued = time.perf_counter()
    with predictor.lock:
        waited = time.perf_counter() - queued
        for m, names in groups.values():
            scores, _ = m.all_item_scores([prompts[n] for n in names])  # (B, N)
            for row, name in enumerate(names):
                ranked[name] = rank_candidates(scores[row], c)
    full = [i for i, _ in ranked["full"]]
    rows = [PartRow(name, tuple(p for p in parts if p not in gone), "hybrid", ranked[name][0][0], ranked[name],
                    changed_share(full, [i for i, _ in ranked[name]])) for name, gone in removed.items()]
    if TEXT_ROW in ranked:
        rows.append(PartRow(TEXT_ROW, ("titles",), "text", ranked[TEXT_ROW][0][0], ranked[TEXT_ROW],
                            changed_share(full, [i for i, _ in ranked[TEXT_ROW]])))
    else:
        rows.append(PartRow(TEXT_ROW, ("titles",), "text", None,
                            note="the text-only model has no next-item head: not compared"))
    return PartComparison(h, c, parts, rows, prompts, note, time.perf_counter() - started, waited)


# ---- the comparison as the demo shows it --------------------------------------------------------------------------

PART_COLUMNS = ["prompt", "keeps", "answer", "top 5 (log-softmax over the candidates)", "ranking changed vs full"]


def part_table_rows(result: PartComparison, labels: list[str], truth: int | None = None) -> list[list[str]]:
    """One row per prompt (``PART_COLUMNS``): its answer, its top 5 with scores and the share of the ranking that
    changed versus the full prompt; ★ marks ``truth`` (a loaded test user's true next item)."""
    def name(item: int) -> str:
        return ("★ " if item == truth else "") + labels[item]

    rows = []
    for r in result.rows:
        if r.item is None:
            rows.append([r.name, kept_label(r.kept), f"({r.note})", "", ""])
            continue
        top = " · ".join(f"{name(i)} ({s:.2f})" for i, s in r.top(5))
        rows.append([r.name, kept_label(r.kept), name(r.item), top, "reference" if r.name == "full" else f"{r.changed:.0%}"])
    return rows


def part_summary(result: PartComparison) -> str:
    """The line above the table: what was run, how removal works, what "changed" means, which rows agree."""
    full = result.row("full")
    same = [r.name for r in result.rows if r.name != "full" and r.item == full.item]
    busy = f"; {result.waited:.2f} s of it waiting for other requests" if result.waited >= 0.01 else ""
    text = (f"Compared {len(result.rows)} prompts in {result.seconds:.2f} s (one batched pass per model{busy}). Every "
            "row is the LLM alone (decode `next`); removed titles are left out of the prompt, removed item slots and "
            f"user token carry the model's neutral vector (the average item). **Ranking changed vs full**: "
            f"{CHANGED_MEANING}. Same answer as the full prompt: {', '.join(same) if same else 'no other row'}.")
    return text + (f" {result.note[0].upper()}{result.note[1:]}." if result.note else "")
