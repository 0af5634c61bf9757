"""The ways a model answers a prompt (decodes), each described once: what the checkpoint needs for it, how it is
served and evaluated, how the demo names it, and the function that answers.

Every place that offers, checks, batches, labels or runs a decode reads :data:`DECODERS` (the predictor, the
evaluation, the results table, the demo), so adding a decode is one entry here. The order is the order of
preference: the first decode a checkpoint offers is its default (``next`` wherever the checkpoint has a next-item
head: the demo exists to show what the LLM reads).

next: the LLM's next-item head alone; residual: the recommender plus the LLM's correction (the recommender's score +
the LLM's gated next-item score); head: the candidate head; rank: title likelihood; constrained: greedy decoding
over the candidate titles; generate: the paper's greedy protocol (an answer may name no candidate).

This module imports no model code at run time (annotations only), so the vocabulary modules and the app may read it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..metrics import match_answer

if TYPE_CHECKING:  # annotations only: the answer functions call methods of the model they are given
    from ..prompt.prompts import Prompt
    from .llara_model import LLaRA

Ranking = list[tuple[int, float]]  # (item, score), best first


@dataclass(frozen=True)
class Reply:
    """One prompt's answer, as every decode gives it."""

    item: int | None  # the chosen candidate; None: a generated line that names no candidate (invalid)
    ranked: Ranking  # every candidate scored, best first; empty for the decodes that only choose
    generated: str | None = None  # the generated line (``generate`` only: the answer may name no candidate)

    def text(self, titles: list[str]) -> str:
        """The generated line, or the chosen candidate's title."""
        if self.generated is not None or self.item is None:
            return self.generated or ""
        return titles[self.item]


@dataclass(frozen=True)
class Decoder:
    name: str
    label: str  # the demo's decode radio
    how: str  # how a panel's headline says the answer was reached
    needs: str  # the training flags a checkpoint needs for it ("": every checkpoint can)
    offered_by: Callable[[LLaRA], bool]  # whether a loaded model has what it needs
    answer: Callable[[LLaRA, list[Prompt]], list[Reply]]
    # reads the prompt only up to its query slot: one pass serves any candidate set, so requests are answered
    # together (llara/serving/combiner.py) and evaluation scores each history once across candidate seeds
    batches: bool = False
    residual: bool = False  # of the next-item pass, the recommender's score plus the LLM's gated correction
    reads_titles: bool = False  # reads the LM's title tokens: untrained guesses for a model without the title loss
    scores: bool = False  # scores every candidate (so the personalization probes apply)
    one_pass: bool = False  # one forward pass per prompt: the results table affords every candidate seed
    # the evaluation also reports HR@5 / NDCG@5; the next-item decodes were added without them and the committed
    # results files have none, so they stay without (a figure that changes the files is a deliberate change)
    ranking_metrics: bool = False


def _best(ranked: Ranking) -> Reply:
    return Reply(ranked[0][0], ranked)


def _next_item(residual: bool) -> Callable[[LLaRA, list[Prompt]], list[Reply]]:
    def answer(model: LLaRA, prompts: list[Prompt]) -> list[Reply]:
        return [_best(model.rank_items(p, residual=residual)) for p in prompts]

    return answer


def _head(model: LLaRA, prompts: list[Prompt]) -> list[Reply]:
    return [_best(model.rank_head(p)) for p in prompts]


def _rank(model: LLaRA, prompts: list[Prompt]) -> list[Reply]:
    return [_best(model.rank(p)) for p in prompts]


def _constrained(model: LLaRA, prompts: list[Prompt]) -> list[Reply]:
    return [Reply(model.constrained(p), []) for p in prompts]


def _generate(model: LLaRA, prompts: list[Prompt]) -> list[Reply]:
    """Greedy decoding of the batch; an answer counts when it names exactly one candidate (``match_answer``)."""
    titles = model.builder.titles
    replies = []
    for p, text in zip(prompts, model.generate(prompts)):
        index = match_answer(text, [titles[c] for c in p.candidates])
        replies.append(Reply(None if index is None else p.candidates[index], [], text))
    return replies


def _every_model(model: LLaRA) -> bool:
    return True


_DECODERS = (
    Decoder("next", "next: the LLM alone", "next-item head (the LLM alone)", "--next-weight > 0",
            lambda m: m.next_head is not None, _next_item(False), batches=True, scores=True, one_pass=True),
    Decoder("residual", "residual: the recommender plus the LLM's correction", "recommender + the LLM's learned correction",
            "--next-weight > 0 --residual", lambda m: m.next_head is not None and m.next_head.gate is not None,
            _next_item(True), batches=True, residual=True, scores=True, one_pass=True),
    Decoder("head", "head: candidate head", "candidate head", "--head-weight > 0", lambda m: m.head is not None, _head,
            scores=True, one_pass=True, ranking_metrics=True),
    Decoder("rank", "rank: title likelihood", "title likelihood", "", _every_model, _rank, reads_titles=True,
            scores=True, ranking_metrics=True),
    Decoder("constrained", "constrained decoding", "constrained decoding", "", _every_model, _constrained,
            reads_titles=True),
    Decoder("generate", "generate: greedy decoding", "greedy generation", "", _every_model, _generate, reads_titles=True),
)
DECODERS: dict[str, Decoder] = {d.name: d for d in _DECODERS}
DECODES: tuple[str, ...] = tuple(DECODERS)  # every decode, best first
TITLE_DECODES: tuple[str, ...] = tuple(d.name for d in _DECODERS if d.reads_titles)
SCORED_DECODES: tuple[str, ...] = tuple(d.name for d in _DECODERS if d.scores)


def available(model: LLaRA, decode: str) -> bool:
    """Whether ``model`` can answer with ``decode``."""
    return DECODERS[decode].offered_by(model)


def offered(model: LLaRA) -> tuple[str, ...]:
    """The decodes ``model`` can answer with, best first (every model offers at least ``rank``)."""
    return tuple(d.name for d in _DECODERS if d.offered_by(model))

