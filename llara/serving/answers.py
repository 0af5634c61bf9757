"""What a request asks for and what it gets back: the ablations, attribution methods and prompt kinds a request may
name, and the answers, predictions and explanations ``llara.serving.inference.Predictor`` returns.

Kept apart from the predictor, which loads and runs the models; a request answered end to end:

    python -m llara.inference --checkpoint checkpoints/llara/movielens-sasrec-curriculum-head \\
        --history "Toy Story|Star Wars|Fargo|Scream" --decode rank --precision nf4
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model.decoders import TITLE_DECODES

if TYPE_CHECKING:  # annotations only: this vocabulary imports no model code
    from ..attribution.methods import Attribution
    from ..model.llara_model import LLaRA
    from ..prompt.prompts import Prompt

ABLATIONS = ("none", "no-embeddings", "no-titles", "shuffle")
ATTRIBUTION_METHODS = ("grad_x_input", "ig", "ablation", "deletion")
PROMPT_KINDS = ("text", "hybrid")


@dataclass
class Answer:
    """What one predictor said: the chosen item, and a full ranking where the decode mode produces one."""

    source: str  # "text", "hybrid" or "recommender"
    decode: str
    item: int | None  # None: a generated answer that names no candidate (invalid)
    text: str  # the generated line, or the chosen title
    ranked: list[tuple[int, float]] = field(default_factory=list)  # (item, score) best first; empty for generate/constrained
    seconds: float = 0.0
    note: str = ""

    @property
    def valid(self) -> bool:
        return self.item is not None


@dataclass
class Prediction:
    history: tuple[int, ...]
    candidates: tuple[int, ...]
    prompts: dict[str, Prompt]  # "text" (absent for the no-titles ablation) and "hybrid"
    answers: dict[str, Answer]  # "text", "hybrid", "recommender"; "written" where the model names its pick
    ablation: str
    note: str = ""
    seconds: float = 0.0  # the whole call, ``waited`` included
    waited: float = 0.0  # of which spent waiting for the model while other requests used it

    def chosen(self) -> dict[str, int]:
        """The item each prompt kind answered (invalid answers left out): what ``Predictor.explain`` explains."""
        return {k: a.item for k, a in self.answers.items() if k in PROMPT_KINDS and a.item is not None}


@dataclass
class Explanation:
    """Attributions of one request's answers: one per prompt kind ("text" is absent under the no-titles ablation)."""

    attributions: dict[str, Attribution]
    method: str
    ablation: str
    decode: str
    note: str = ""
    seconds: float = 0.0
    prompts: dict[str, Prompt] = field(default_factory=dict)  # the prompts explained, by kind
    history: tuple[int, ...] = ()  # the history as explained (cleaned: duplicates and excess items dropped)
    decodes: dict[str, str] = field(default_factory=dict)  # by kind: the decode that chose the answer explained,
    #   after the fallback for a model that lacks the one asked for


@dataclass
class PartRow:
    """One prompt of a part comparison (``llara.serving.part_view``), answered by the LLM's next-item head alone."""

    name: str  # a row of ``llara.evaluation.parts.variants`` ("full", "no titles", ...) or "text-only model"
    kept: tuple[str, ...]  # the parts its prompt keeps ("titles", "items", "user")
    source: str  # "hybrid" or "text"
    item: int | None  # None: this model cannot answer with the next-item head (``note`` says why)
    ranked: list[tuple[int, float]] = field(default_factory=list)  # (item, log-softmax over the candidates), best first
    changed: float | None = None  # share of candidate pairs ordered the other way round than in the full prompt
    note: str = ""

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        return self.ranked[:k]


@dataclass
class PartComparison:
    """The full hybrid prompt beside every variant with parts removed, and the text-only model, on one request."""

    history: tuple[int, ...]
    candidates: tuple[int, ...]
    parts: tuple[str, ...]  # the parts the served checkpoint's hybrid prompt has
    rows: list[PartRow]  # "full" first, then the variants, then the text-only model
    prompts: dict[str, Prompt]  # each row's prompt, cut after its query slot (what the head reads)
    note: str = ""  # what cleaning the history changed
    seconds: float = 0.0  # the whole call, ``waited`` included
    waited: float = 0.0

    def row(self, name: str) -> PartRow:
        return next(r for r in self.rows if r.name == name)


UNTRAINED_TITLES = (f"this model was trained without the title loss, so its title decodes ({', '.join(TITLE_DECODES)}) "
                    "are the language model's untrained guesses")


def names_its_pick(model: LLaRA) -> bool:
    """Whether ``model`` was trained to write the title its next-item head ranks first (the follow loss,
    llara/model/follow.py): then the app shows the written answer beside the ranking."""
    return writes_titles(model) and model.weights.get("follow", 0.0) > 0 and model.next_head is not None


def writes_titles(model: LLaRA) -> bool:
    """Whether ``model`` was trained to write the answer's title (the paper's loss): what ``TITLE_DECODES`` read.
    A model trained on the next-item losses alone (title weight 0) answers them with untrained guesses."""
    return model.weights.get("title", 1.0) > 0


def check_method(method: str) -> str:
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}.")
    return method
