"""The datasets the demo offers, whether each can be served here, and a registry that holds few of them at once.

One table (``DEMO_DATASETS``) names each dataset's label, its pair of committed checkpoints (the hybrid model and
its text-only twin) and its example histories. A dataset is offered when both checkpoints and their recommender are
here and its data resolves (for LastFM: the folder the checkpoint names, ``$LLARA_LASTFM_DIR``, a converted copy in
the cache, or a checked download where downloads are allowed); otherwise ``unavailable`` says how to get it.

``OneAtATime`` loads a dataset's models on first use and releases the least recently used ones beyond ``keep``
(default 1), so a server's memory stays that of one pair of models whichever dataset its visitors pick.
"""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ..constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT, LASTFM_CHECKPOINT, LASTFM_TEXT_CHECKPOINT

T = TypeVar("T")


@dataclass(frozen=True)
class DemoDataset:
    """One dataset of the demo: its switch label, its checkpoints and the example histories the page offers."""

    name: str
    label: str
    checkpoint: Path
    text_checkpoint: Path | None
    examples: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def checkpoints(self) -> list[Path]:
        return [self.checkpoint] + ([self.text_checkpoint] if self.text_checkpoint else [])


DEMO_DATASETS: dict[str, DemoDataset] = {
    "movielens": DemoDataset("movielens", "MovieLens (movies)", DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT, (
        ("Toy Story (1995)", "Aladdin (1992)", "The Lion King (1994)", "Beauty and the Beast (1991)"),
        ("Star Wars (1977)", "The Empire Strikes Back (1980)", "Raiders of the Lost Ark (1981)", "Alien (1979)"),
        ("Pulp Fiction (1994)", "Reservoir Dogs (1992)", "Fargo (1997)", "The Usual Suspects (1995)"),
    )),
    "lastfm": DemoDataset("lastfm", "LastFM (artists)", LASTFM_CHECKPOINT, LASTFM_TEXT_CHECKPOINT, (
        ("Radiohead", "Muse", "Coldplay", "Placebo"),
        ("Britney Spears", "Christina Aguilera", "Lady Gaga", "Rihanna"),
        ("Metallica", "Iron Maiden", "Megadeth", "Slayer"),
    )),
}


def parse_offered(text: str) -> list[str]:
    """``"movielens,lastfm"`` -> the names in order (the first opens the page); ValueError naming an unknown one."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEMO_DATASETS]
    if not names or unknown:
        raise ValueError(f"unknown demo dataset {unknown[0] if unknown else text!r}; choose from "
                         f"{', '.join(DEMO_DATASETS)} (comma-separated, the first opens the page)")
    return list(dict.fromkeys(names))


def unavailable(spec: DemoDataset) -> str | None:
    """Why ``spec`` cannot be served here (a sentence saying how to get what is missing), or None when it can.

    Nothing is downloaded here: where downloads are allowed, missing data counts as available (it is fetched, and
    checked, when the dataset is first loaded)."""
    from ..checkpoint import CheckpointError, read_llara_meta, resolve_path
    from ..data import DATASETS, DatasetUnavailable
    from ..sources import downloads_allowed

    meta: dict = {}
    for folder in spec.checkpoints:
        if not (folder / "meta.json").is_file():
            return (f"{spec.label}: its model {folder.name} is not here (checkpoints/llara/{folder.name}: train it "
                    "with `python -m llara.train`, or pull the repository's committed checkpoints)")
        try:
            meta = read_llara_meta(folder)
        except CheckpointError as err:
            return f"{spec.label}: {err}"
        rec = Path(str(resolve_path(meta["recommender"]["path"], folder)) + ".json")
        if not rec.is_file():
            return f"{spec.label}: the recommender its model {folder.name} projects ({rec.parent.name}/{rec.stem}) is not here"
    data = meta["dataset"]
    if not DATASETS.get(data["name"], ("", False))[1]:  # read from an installed package (MovieLens)
        return None
    trained_on = resolve_path(data["data_dir"], spec.checkpoint) if data.get("data_dir") else None
    if (trained_on is not None and Path(trained_on).is_dir()) or downloads_allowed():
        return None
    from ..data.release_source import release_dir

    try:
        release_dir(data["name"])  # downloads are not allowed: this only looks ($LLARA_LASTFM_DIR, the cache)
    except DatasetUnavailable as err:
        return f"{spec.label}: {err}"
    return None


def release_memory() -> None:
    """Give the memory of dropped models back to the operating system (their tensors are freed by the collector,
    and glibc keeps freed blocks unless trimmed)."""
    from ..memory import trim_heap

    gc.collect()
    trim_heap()


class OneAtATime(Generic[T]):
    """Values loaded by name on first use; at most ``keep`` held at once, the least recently used released first.

    The old value is dropped *before* the new one loads, so memory never holds ``keep + 1`` of them at the peak
    (a request still running on a dropped value keeps it alive until it ends). Loads run one at a time."""

    def __init__(self, load: Callable[[str], T], keep: int = 1, release: Callable[[], None] = release_memory) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._load, self._release, self.keep = load, release, keep
        self._held: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, value: T) -> None:
        """Hold an already loaded ``value`` (the one the server started with)."""
        with self._lock:
            self._make_room(name)
            self._held[name] = value

    def get(self, name: str, on_load: Callable[[str], None] | None = None) -> T:
        """The value of ``name``, loaded (after ``on_load(name)``, e.g. a message to the waiting person) if not held."""
        with self._lock:
            if name in self._held:
                self._held.move_to_end(name)
                return self._held[name]
            if on_load is not None:
                on_load(name)
            self._make_room(name)
            value = self._load(name)
            self._held[name] = value
            return value

    def holds(self, name: str) -> bool:
        return name in self._held

    @property
    def held(self) -> list[str]:
        """The names held now, least recently used first."""
        return list(self._held)

    def _make_room(self, name: str) -> None:
        dropped = self._held.pop(name, None) is not None  # (put again: the new value replaces it)
        while len(self._held) >= self.keep:
            self._held.popitem(last=False)
            dropped = True
        if dropped:
            self._release()
