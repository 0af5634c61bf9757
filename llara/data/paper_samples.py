"""The paper's exact evaluation samples: the original release's MovieLens val/test rows, matched to their users.

Our samples follow the paper's protocol on the paper's own val/test users, yet they differ from the release's
rows for many users: ML-100K gives many ratings of a user the same timestamp, and the release ordered those ties
in a way the raw data cannot rebuild. ``with_release_samples`` evaluates on the release's rows instead (training
is untouched: it stays on our samples of the other users); ``compare`` counts how far the two agree.

The release's rows carry no user id, but every item is an ``[item, rating]`` pair, and each row's pairs occur
together in exactly one user's ratings: that is how a row is matched to its ML-100K user.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from . import movielens
from .protocol import MAX_HISTORY, Sample, SequenceDataset
from .release import ReleaseRow, read_split

RELEASE_ENV = "LLARA_RELEASE_DIR"  # where a release folder is found when no --release-dir is given
EVAL_SPLITS = ("val", "test")


def release_dir(path: str | Path | None = None) -> Path:
    """The folder given, else ``$LLARA_RELEASE_DIR``; a clear error when there is neither or it does not exist."""
    chosen = path or os.environ.get(RELEASE_ENV)
    if not chosen:
        raise ValueError(f"the paper's samples need a release folder: pass --release-dir DIR (or set {RELEASE_ENV}) "
                         "with the original release's val and test files (val.jsonl/test.jsonl, or its *.df pickles)")
    folder = Path(chosen)
    if not folder.is_dir():
        raise FileNotFoundError(f"release folder {folder} does not exist")
    return folder


def tie_counts(ratings: dict[str, np.ndarray], min_rating: int = 0) -> tuple[int, int]:
    """``(tied, total)``: ratings (>= ``min_rating``) that share their (user, timestamp) with another one kept."""
    keep = ratings["rating"] >= min_rating
    keys = np.stack([ratings["user"][keep], ratings["timestamp"][keep]], axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return int((counts[inverse.ravel()] > 1).sum()), int(keep.sum())


def _user_ratings(ratings: dict[str, np.ndarray], min_rating: int) -> dict[int, dict[tuple[int, int], int]]:
    """user -> {(item index, rating): timestamp} over the ratings >= ``min_rating``."""
    out: dict[int, dict[tuple[int, int], int]] = {}
    for u, i, r, t in zip(*(ratings[k].tolist() for k in ("user", "item", "rating", "timestamp"))):
        if r >= min_rating:
            out.setdefault(u, {})[(i - 1, r)] = t  # item index = ML-100K movie id - 1, as in the release
    return out


def match_users(rows: list[ReleaseRow], ratings: dict[str, np.ndarray], min_rating: int) -> list[int]:
    """The ML-100K user of each row: the one user whose ratings hold every ``(item, rating)`` pair of the row."""
    by_user = _user_ratings(ratings, min_rating)
    users = []
    for row in rows:
        if not row.ratings:
            raise ValueError(f"{row.where}: the row has bare item ids; matching a row to its user needs the "
                             "release's [item, rating] pairs")
        pairs = set(zip((*row.sample.history, row.sample.target), row.ratings))
        found = [u for u, rated in by_user.items() if pairs <= rated.keys()]
        if len(found) != 1:
            raise ValueError(f"{row.where}: the row's (item, rating) pairs match {len(found)} users of ML-100K, not "
                             "exactly one; is this the MovieLens-100K release?")
        users.append(found[0])
    return users


def release_samples(ds: SequenceDataset, folder: str | Path, allow_pickle: bool = False) -> dict[str, list[Sample]]:
    """The release's val and test samples. For MovieLens each row gets its user's id and the rows are ordered by
    user id, as ours are (so sample ``i`` is the same user's on both sides); other datasets keep the file order."""
    folder = release_dir(folder)
    out: dict[str, list[Sample]] = {}
    for split in EVAL_SPLITS:
        rows = read_split(folder, split, ds.n_items, allow_pickle)
        if ds.name == "movielens" and rows and all(r.ratings for r in rows):
            users = match_users(rows, movielens.load_ratings(), movielens.MIN_RATING)
            samples = [dataclasses.replace(r.sample, user=u) for r, u in zip(rows, users)]
            out[split] = sorted(samples, key=lambda s: s.user)
        else:
            out[split] = [r.sample for r in rows]
    return out


def with_release_samples(ds: SequenceDataset, folder: str | Path, allow_pickle: bool = False) -> SequenceDataset:
    """A copy of ``ds`` whose val and test samples are the release's rows; its training samples are unchanged.

    Raises when a release row belongs to a user ``ds`` trains on (e.g. with a random user split): evaluating on
    it would test the model on a user it was trained on."""
    samples = release_samples(ds, folder, allow_pickle)
    train_users = set(ds.users.get("train", []))
    users = dict(ds.users)
    for split, rows in samples.items():
        known = [s.user for s in rows if s.user >= 0]
        leaked = sorted(set(known) & train_users)
        if leaked:
            raise ValueError(f"the release's {split} rows belong to {len(leaked)} users this dataset trains on (e.g. "
                             f"{leaked[:3]}): use the paper's user split (--split paper)")
        if known:
            users[split] = sorted(known)
    return dataclasses.replace(ds, val=samples["val"], test=samples["test"], users=users)


def _tie_order_of_ours(sample: Sample, rated: dict[tuple[int, int], int], ratings: tuple[int, ...]) -> bool:
    """Whether the row is the user's last interactions under some order of their tied ratings: its timestamps
    never decrease, the target is at the user's last timestamp, and no rating later than its first item is left
    out (a short row must hold all of the user's ratings)."""
    items = (*sample.history, sample.target)
    times = [rated[(i, r)] for i, r in zip(items, ratings)]
    if times != sorted(times) or times[-1] != max(rated.values()):
        return False
    later = {key for key, t in rated.items() if t > times[0]}
    inside = set(zip(items, ratings))
    return later <= inside and (len(sample.history) == MAX_HISTORY or len(rated) == len(items))


def compare(ds: SequenceDataset, folder: str | Path, allow_pickle: bool = False) -> dict:
    """How our MovieLens val/test samples agree with the release's, user by user, and the tie figures behind the
    differences. ``ds`` is the MovieLens dataset with the paper's user split."""
    folder = release_dir(folder)
    ratings = movielens.load_ratings()
    by_user = _user_ratings(ratings, movielens.MIN_RATING)
    out: dict = {"ties": {"all": tie_counts(ratings), "kept": tie_counts(ratings, movielens.MIN_RATING)}, "splits": {}}
    for split in EVAL_SPLITS:
        rows = read_split(folder, split, ds.n_items, allow_pickle)
        users = match_users(rows, ratings, movielens.MIN_RATING)
        ours = {s.user: s for s in ds.split(split)}
        pairs = [(row, ours.get(u)) for row, u in zip(rows, users)]
        out["splits"][split] = {
            "rows": len(rows),
            "matched": len(set(users)),
            "our_users": sum(mine is not None for _, mine in pairs),
            "target": sum(mine is not None and mine.target == row.sample.target for row, mine in pairs),
            "history": sum(mine is not None and mine.history == row.sample.history for row, mine in pairs),
            "history_set": sum(mine is not None and set(mine.history) == set(row.sample.history) for row, mine in pairs),
            "tie_order": sum(_tie_order_of_ours(row.sample, by_user[u], row.ratings) for row, u in zip(rows, users)),
        }
    return out


def format_comparison(result: dict) -> str:
    """The figures of ``compare`` as the lines ``python -m llara.data compare-release`` prints."""
    tied, total = result["ties"]["all"]
    kept_tied, kept = result["ties"]["kept"]
    lines = [f"ML-100K ratings that share their (user, timestamp) with another rating of the same user: "
             f"{tied:,} of {total:,} ({tied / total:.0%})",
             f"  among the ratings >= 3 that the sequences keep: {kept_tied:,} of {kept:,} ({kept_tied / kept:.0%})", "",
             f"{'split':6s}{'rows':>6s}{'matched users':>15s}{'our users':>11s}{'same target':>13s}{'same history':>14s}"
             f"{'same as a set':>15s}{'a tie order of the data':>25s}"]
    for split, s in result["splits"].items():
        n = s["rows"]
        cells = [f"{s[k]}/{n}" for k in ("matched", "our_users", "target", "history", "history_set", "tie_order")]
        lines.append(f"{split:6s}{n:>6d}{cells[0]:>15s}{cells[1]:>11s}{cells[2]:>13s}{cells[3]:>14s}{cells[4]:>15s}{cells[5]:>25s}")
    return "\n".join(lines)
