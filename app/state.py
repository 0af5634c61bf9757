"""What the demo loads once at start-up and shares between requests: the predictor, item labels, the search."""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llara.checkpoint import CheckpointError
from llara.constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT
from llara.data import DATASETS, SequenceDataset
from llara.serving.demo_datasets import DEMO_DATASETS, OneAtATime, unavailable
from llara.serving.inference import Predictor
from llara.sources import SourceUnavailable

from .wording import Words, words_for

DEFAULT_CHECKPOINT = DEMO_CHECKPOINT
DEFAULT_TEXT_CHECKPOINT = DEMO_TEXT_CHECKPOINT  # the text-only panel's model (None: the main model answers it)


def item_labels(ds: SequenceDataset) -> list[str]:
    """One unique, human-readable label per item: the title with its year (and the id where even that repeats)."""
    cat = ds.catalog
    labels = []
    for title, year in zip(cat.titles, cat.years):
        labels.append(f"{title} ({year})" if year and not title.endswith(f"({year})") else title)
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [f"{label} [#{cat.raw_ids[i]}]" if seen[label] > 1 else label for i, label in enumerate(labels)]


def _say(msg: str) -> None:
    print(f"[llara-studio] {msg}", file=sys.stderr, flush=True)


@dataclass
class Studio:
    """The loaded predictor and what the UI needs around it. Read-only after ``load`` except the lazy search."""

    predictor: Predictor
    checkpoint: str
    precision: str
    labels: list[str] = field(default_factory=list)
    by_label: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
    _search: object = None
    _search_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dataset(self) -> SequenceDataset:
        return self.predictor.dataset

    @property
    def words(self) -> Words:
        """How the page names this catalog's items (movies, artists)."""
        return words_for(self.dataset.catalog.domain)

    @property
    def examples(self) -> list[list[str]]:
        """The demo's example histories for this dataset, with labels this catalog has (at least two each)."""
        spec = DEMO_DATASETS.get(self.dataset.name)
        found = [[label for label in ex if label in self.by_label] for ex in (spec.examples if spec else ())]
        return [ex for ex in found if len(ex) >= 2]

    @classmethod
    def from_predictor(cls, predictor: Predictor, checkpoint: str = "", precision: str = "", seconds: float = 0.0) -> Studio:
        labels = item_labels(predictor.dataset)
        return cls(predictor, str(checkpoint), precision, labels, {label: i for i, label in enumerate(labels)}, seconds)

    @classmethod
    def load(cls, checkpoint: str | Path = DEFAULT_CHECKPOINT, precision: str = "nf4", threads: int = 0,
             text_checkpoint: str | Path | None = None, device=None) -> Studio:
        """Load the checkpoint (converting the embedded base model on the very first run), saying what it does.
        ``device``: where the models run (a ``torch.device`` or its name; default CPU)."""
        started = time.perf_counter()
        for folder in (checkpoint, text_checkpoint):
            if folder is not None and not (Path(folder) / "meta.json").is_file():
                raise FileNotFoundError(f"no LLaRA checkpoint at {folder} (meta.json missing): train one with "
                                        "`python -m llara.train --output <folder>` or pass --checkpoint / --text-checkpoint")
        _say(f"loading {checkpoint} at {precision} on {device or 'cpu'} (the first run also converts the embedded "
             "SmolLM2 once) ...")
        predictor = Predictor.load(str(checkpoint), precision=precision, threads=threads,
                                   text_checkpoint=str(text_checkpoint) if text_checkpoint else None, device=device)
        seconds = time.perf_counter() - started
        _say(f"model ready in {seconds:.1f} s")
        return cls.from_predictor(predictor, str(checkpoint), predictor.precision, seconds)

    def search(self):
        """The description search, built on first use (it loads a second model: keep it out of the cold start)."""
        with self._search_lock:
            if self._search is None:
                from llara.data.search import CatalogSearch

                _say("loading the description search (all-MiniLM-L6-v2) ...")
                self._search = CatalogSearch(self.dataset.catalog)
            return self._search


# what loading a dataset's models may fail with; each carries a sentence for the person who asked
LOAD_ERRORS = (OSError, ValueError, CheckpointError, SourceUnavailable)


@dataclass(frozen=True)
class Offer:
    """A dataset on the switch: its key, label, catalog domain and, when it cannot be served here, why."""

    name: str
    label: str
    domain: str
    reason: str | None = None


class Studios:
    """The Studio of each offered dataset, loaded on first use; at most ``keep`` held at once, so the server's memory
    is that of one pair of models by default (``llara.serving.demo_datasets.OneAtATime``)."""

    def __init__(self, offers: list[Offer], load: Callable[[str], Studio], keep: int = 1) -> None:
        self.offers = {offer.name: offer for offer in offers}
        ready = [offer.name for offer in offers if offer.reason is None]
        if not ready:
            raise ValueError("no dataset can be served: " + "; ".join(str(offer.reason) for offer in offers))
        self.default = ready[0]
        self.registry: OneAtATime[Studio] = OneAtATime(load, keep)

    @classmethod
    def single(cls, studio: Studio) -> Studios:
        """One already loaded studio and no switch (a checkpoint given on the command line, the tests)."""
        name = studio.dataset.name
        studios = cls([Offer(name, name, studio.dataset.catalog.domain)], lambda _: studio)
        studios.registry.put(name, studio)
        return studios

    @classmethod
    def for_datasets(cls, names: list[str], precision: str = "nf4", threads: int = 0, device=None,
                     keep: int = 1) -> Studios:
        """The demo's datasets ``names`` (``llara.serving.demo_datasets.DEMO_DATASETS``), each checked for what it needs;
        none is loaded yet."""
        offers = [Offer(n, DEMO_DATASETS[n].label, DATASETS[n][0], unavailable(DEMO_DATASETS[n])) for n in names]

        def load(name: str) -> Studio:
            spec = DEMO_DATASETS[name]
            return Studio.load(spec.checkpoint, precision=precision, threads=threads,
                               text_checkpoint=spec.text_checkpoint, device=device)

        return cls(offers, load, keep)

    @property
    def switchable(self) -> bool:
        return len(self.offers) > 1

    def words(self, name: str) -> Words:
        """The wording of dataset ``name`` without loading it."""
        return words_for(self.offers[name].domain if name in self.offers else "")

    def studio(self, name: str | None, on_load: Callable[[str], None] | None = None) -> Studio:
        """The loaded Studio of ``name`` (None: the default), loading it (after ``on_load``) when it is not held;
        ValueError with the reason when it is not offered or cannot be served."""
        name = name or self.default
        offer = self.offers.get(name)
        if offer is None:
            raise ValueError(f"Unknown dataset {str(name)[:40]!r}; this server offers {', '.join(self.offers)}.")
        if offer.reason is not None:
            raise ValueError(offer.reason)
        return self.registry.get(name, on_load)
