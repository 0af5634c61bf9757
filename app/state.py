"""What the demo loads once at start-up and shares between requests: the predictor, item labels, the search."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llara.constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT
from llara.data import SequenceDataset
from llara.inference import Predictor

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
                from llara.search import CatalogSearch

                _say("loading the description search (all-MiniLM-L6-v2) ...")
                self._search = CatalogSearch(self.dataset.catalog)
            return self._search
