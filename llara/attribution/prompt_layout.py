"""Prompts built from titles, and where each item sits in a prompt: the map from a person's titles to token
positions that attributions and the command lines share.

``resolve_item`` is how every command line turns a title into an item (case-insensitive, with suggestions for a
wrong one), after ``check_title_lengths``; ``build_prompt`` resolves titles and draws candidates where none are given; ``prompt_layout`` finds every history item's title tokens and embedding slot in an encoded prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..constants import CANDIDATE_TOKEN, HISTORY_TOKEN, MAX_TITLE_CHARS, PLACEHOLDER_TOKEN
from ..data import NUM_CANDIDATES, candidates_around
from ..data.catalog import UnknownTitle
from ..model.llara_model import LLaRA
from ..prompt.prompts import SEPARATOR, Prompt

# ---- prompts from titles ---------------------------------------------------------------------------------------

def check_title_lengths(titles: list[str], what: str) -> list[str]:
    """``titles`` unchanged, once none is longer than any catalog title; a longer one is refused by its length alone,
    without echoing a string that may be megabytes long. ``what`` names the option it came from."""
    long = [t for t in titles if len(t) > MAX_TITLE_CHARS]
    if long:
        raise ValueError(f"a {what} title of {len(long[0]):,} characters is not in the catalog "
                         f"(titles are at most {MAX_TITLE_CHARS} characters)")
    return titles


def resolve_item(catalog, value: str | int, what: str) -> int:
    """The item a title (or an item id) names; ``UnknownTitle`` prefixed with ``what`` for a title the catalog lacks."""
    if isinstance(value, str):
        try:
            return catalog.find(value)
        except UnknownTitle as err:
            raise UnknownTitle(f"{what}: {err}") from None
    catalog.check_ids([value], what)
    return int(value)


def build_prompt(model: LLaRA, history: list, candidates: list | None = None, candidate: str | int | None = None,
                 hybrid: bool = True, seed: int = 0, k: int = NUM_CANDIDATES, template: int = 0) -> tuple[Prompt, int | None]:
    """A prompt from titles (or item ids); returns it with the named candidate's id (``None`` when not named).

    Without ``candidates``, ``k`` are drawn with ``llara.data.candidates_around`` (seeded by ``seed``) around the
    named candidate, or around a random unseen item when none is named."""
    catalog = model.builder.catalog
    if not history:
        raise ValueError("the history is empty: name at least one watched item")
    hist = [resolve_item(catalog, h, f"history item {i + 1}") for i, h in enumerate(history)]
    target = None if candidate is None else resolve_item(catalog, candidate, "candidate")
    if target is not None and target in hist:
        raise ValueError(f"candidate {catalog.titles[target]!r} is in the history; candidates must be unseen items")
    if candidates:
        cands = [resolve_item(catalog, c, f"candidate {i + 1}") for i, c in enumerate(candidates)]
        if target is not None and target not in cands:
            raise ValueError(f"candidate {catalog.titles[target]!r} is not among the {len(cands)} candidates given")
        seen = sorted(set(cands) & set(hist))
        if seen:
            raise ValueError(f"{catalog.titles[seen[0]]!r} is both in the history and among the candidates")
    else:
        cands = list(candidates_around(hist, catalog, seed, include=target, k=k))
    return model.builder.build(hist, cands, hybrid=hybrid, template=template), target


# ---- where each item sits in the prompt --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Token positions of every item's title and slot in a prompt, and a part/item label per position."""

    history_titles: list[list[int]]  # empty lists when the prompt lists no titles
    history_slots: list[int | None]  # None in a text-only prompt
    parts: list[str]
    items: list[int | None]


def prompt_layout(model: LLaRA, prompt: Prompt) -> Layout:
    """Title spans are found in character space (the prompt text is rebuilt from its items exactly as the builder
    writes it) and mapped to tokens with the fast tokenizer's offsets: no assumption about how titles tokenize."""
    b, tok = model.builder, model.builder.tokenizer
    enc = tok(prompt.text, add_special_tokens=True, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(prompt.input_ids):
        raise ValueError("the prompt's token ids differ from its text's: was it built with another tokenizer?")
    offsets, placeholders = enc["offset_mapping"], {b.history_id, b.candidate_id, b.placeholder_id}
    parts: list[str] = ["prompt"] * len(prompt.input_ids)
    items: list[int | None] = [None] * len(prompt.input_ids)
    titles: list[list[list[int]]] = []
    cursor = 0
    for role, group, slot_tok in (("history", prompt.history, HISTORY_TOKEN), ("candidate", prompt.candidates, CANDIDATE_TOKEN)):
        slot_tok = slot_tok if prompt.hybrid else PLACEHOLDER_TOKEN
        if not prompt.titles:  # the "IDs only" ablation: the slots are the whole listing, found below
            titles.append([[] for _ in group])
            continue
        listing = SEPARATOR.join(f"{b.titles[i]} {slot_tok}" for i in group)
        cursor = prompt.text.find(listing, cursor)
        if cursor < 0:
            raise ValueError(f"cannot find the {role} list in the prompt text")
        spans = []
        for item in group:
            start, end = cursor, cursor + len(b.titles[item])
            cursor = end + 1 + len(slot_tok) + len(SEPARATOR)
            pos = [p for p, (s, e) in enumerate(offsets)
                   if e > s and s < end and e > start and prompt.input_ids[p] not in placeholders]
            if not pos:
                raise ValueError(f"no tokens found for the title of item {item}")
            for p in pos:
                parts[p], items[p] = f"{role} title", item
            spans.append(pos)
        titles.append(spans)
    slots: list[int | None] = [None] * len(prompt.history)
    for k, (p, item) in enumerate(zip(prompt.slot_positions, prompt.slot_items)):  # hybrid only: history, then candidates
        role = "history" if k < len(prompt.history) else "candidate"
        parts[p], items[p] = f"{role} slot", item
        if role == "history":
            slots[k] = p
    return Layout(titles[0], slots, parts, items)
