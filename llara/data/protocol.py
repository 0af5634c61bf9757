"""The paper's data protocol: sequences -> user split -> samples -> seeded candidate sets.

Every function here is deterministic given its seed: the same seed gives the same bytes (see
``SequenceDataset.fingerprint``).

Candidate streams: each sample's candidates come from its own generator. The default stream (``"split"``) keys it
by (seed, split, index), so sample ``i`` of the val users and sample ``i`` of the test users draw independently.
The earlier stream (``"shared"``) keyed it by (seed, index) only: val and test sample ``i`` then shared their draws
(the same target position about 9 times in 10, 18.8 of 19 negatives in common); it stays available so that rows
computed with it can be rebuilt exactly.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .catalog import Catalog

MAX_HISTORY = 10  # the paper keeps the last <= 10 items before the target
MIN_HISTORY = 3  # samples with fewer history items are dropped
NUM_CANDIDATES = 20  # the target + 19 negatives
SPLITS = ("train", "val", "test")
CANDIDATE_STREAMS = ("split", "shared")  # see the module docstring
DEFAULT_STREAM = "split"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # fixed: changing one changes every candidate set of that split


@dataclass(frozen=True)
class Sample:
    """One next-item prediction: the user's recent ``history`` (oldest first) and the ``target`` that followed."""

    history: tuple[int, ...]
    target: int
    user: int = -1  # the source data's user id where known (-1 for the release format, which has none)


@dataclass
class SequenceDataset:
    """A dataset ready for training and evaluation: catalog plus train/val/test samples."""

    name: str
    catalog: Catalog
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    n_interactions: int = 0
    users: dict[str, list[int]] = field(default_factory=dict)  # split -> user ids (empty where unknown)
    candidate_stream: str = DEFAULT_STREAM  # what ``candidates`` draws from unless told otherwise
    sequences: dict[int, list[int]] = field(default_factory=dict)  # user id -> whole chronological sequence, where known

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def pad_id(self) -> int:
        return self.catalog.pad_id

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    def candidates(self, split: str, seed: int = 0, k: int = NUM_CANDIDATES, stream: str | None = None) -> list[tuple[int, ...]]:
        """The fixed candidate set of every sample in ``split`` for this ``seed`` (``stream``: the dataset's own
        ``candidate_stream`` unless given)."""
        return candidate_sets(self.split(split), self.catalog, seed=seed, split=split, k=k,
                              stream=stream or self.candidate_stream)

    def fingerprint(self) -> str:
        """SHA-256 over the samples of every split: equal fingerprints mean byte-identical splits."""
        digest = hashlib.sha256()
        for split in SPLITS:
            payload = [[s.user, list(s.history), s.target] for s in self.split(split)]
            digest.update(json.dumps([split, payload]).encode())
        return digest.hexdigest()


def samples_from_sequence(items: list[int], user: int = -1, last_only: bool = False) -> list[Sample]:
    """Sliding-window samples of one chronological sequence.

    ``last_only`` gives just the final interaction as target (val/test users); otherwise every position with at
    least ``MIN_HISTORY`` items before it is a sample, with the last ``MAX_HISTORY`` of them as history.
    """
    positions = [len(items) - 1] if last_only else range(1, len(items))
    out = []
    for t in positions:
        history = tuple(items[max(0, t - MAX_HISTORY) : t])
        if len(history) >= MIN_HISTORY:
            out.append(Sample(history=history, target=items[t], user=user))
    return out


def split_users(users: list[int], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[int]]:
    """A seeded random 8:1:1 split of user ids (sorted within each split)."""
    if len(users) < 3:
        raise ValueError(f"need at least 3 users to split into train/val/test, got {len(users)}")
    order = np.random.default_rng(seed).permutation(sorted(users))
    n_val = max(1, int(round(fractions[1] * len(order))))
    n_test = max(1, int(round(fractions[2] * len(order))))
    n_train = len(order) - n_val - n_test
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {name: sorted(int(u) for u in part) for name, part in zip(SPLITS, parts)}


def build_samples(sequences: dict[int, list[int]], users: dict[str, list[int]]) -> dict[str, list[Sample]]:
    """Training users give every prefix; val/test users give their last interaction only."""
    out: dict[str, list[Sample]] = {}
    for split in SPLITS:
        samples: list[Sample] = []
        for user in users[split]:
            samples.extend(samples_from_sequence(sequences.get(user, []), user=user, last_only=split != "train"))
        out[split] = samples
    return out


def draw_candidates(
    history: tuple[int, ...] | list[int],
    target: int,
    catalog: Catalog,
    rng: np.random.Generator,
    k: int = NUM_CANDIDATES,
) -> tuple[int, ...]:
    """The target plus ``k - 1`` items drawn uniformly from items not in the history, in random order.

    Items whose title equals (case-insensitively) the target's or another candidate's are skipped, so a title
    names exactly one candidate.
    """
    n = len(catalog)
    catalog.check_ids([target], "target")
    excluded = set(int(i) for i in history) | {int(target)}
    if n - len(excluded) < k - 1:
        raise ValueError(f"cannot draw {k - 1} negatives: the catalog has {n} items and {len(excluded)} are excluded")
    chosen = [int(target)]
    seen_titles = {catalog.title_key(target)}
    attempts = 0
    while len(chosen) < k:
        item = int(rng.integers(n))
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {k} candidates with distinct titles from this catalog")
        key = catalog.title_key(item)
        if item in excluded or key in seen_titles:
            continue
        chosen.append(item)
        seen_titles.add(key)
        excluded.add(item)
    order = rng.permutation(k)
    return tuple(chosen[i] for i in order)


def candidates_around(
    history: tuple[int, ...] | list[int],
    catalog: Catalog,
    seed: int,
    include: int | None = None,
    k: int = NUM_CANDIDATES,
    per_history: bool = False,
) -> tuple[int, ...]:
    """``k`` seeded candidates for an ad-hoc history: drawn around ``include`` (e.g. the known next item), or
    around a random unseen item when none is given, so the set never gives away which item is "right".
    ``per_history``: key the draw by (seed, history) rather than by the seed alone, so two histories get two
    different random sets for the same seed (with the seed alone they share every negative both can take)."""
    rng = np.random.default_rng([seed, *map(int, history)] if per_history else seed)
    anchor = include
    if anchor is None:  # draw_candidates builds the set around one item: any unseen one will do
        unseen = sorted(set(range(len(catalog))) - set(history))
        anchor = unseen[int(rng.integers(len(unseen)))] if unseen else history[0]  # (none: draw_candidates says so)
    return draw_candidates(history, anchor, catalog, rng, k=k)


def sample_rng(seed: int, split: str, index: int, stream: str = DEFAULT_STREAM) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: keyed by (seed, split code, index), or by (seed, index) for
    the earlier ``"shared"`` stream."""
    if stream not in CANDIDATE_STREAMS:
        raise ValueError(f"unknown candidate stream {stream!r}; valid streams: {', '.join(CANDIDATE_STREAMS)}")
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if seed < 0:
        raise ValueError(f"candidate seed must be >= 0, got {seed}")
    key = [seed, SPLIT_CODES[split], index] if stream == "split" else [seed, index]
    return np.random.default_rng(key)


def candidate_sets(samples: list[Sample], catalog: Catalog, seed: int, *, split: str, k: int = NUM_CANDIDATES,
                   stream: str = DEFAULT_STREAM) -> list[tuple[int, ...]]:
    """One candidate set per sample of ``split``; sample ``i`` draws from ``sample_rng(seed, split, i, stream)``.

    A per-sample generator makes a sample's candidates independent of how many samples precede it, so a
    subset or a shard of an evaluation sees the same candidates as the full run.
    """
    sample_rng(seed, split, 0, stream)  # checks seed, split and stream even when there are no samples
    return [
        draw_candidates(s.history, s.target, catalog, sample_rng(seed, split, i, stream), k=k)
        for i, s in enumerate(samples)
    ]


def pad_histories(histories: list[tuple[int, ...]] | list[list[int]], pad_id: int, max_len: int = MAX_HISTORY) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(N, max_len)`` int64 matrix of the last ``max_len`` items, and ``(N,)`` lengths.

    Right padding with ``pad_id`` is the release's layout: ``seq[:len_seq]`` are the items, oldest first.
    """
    seqs = np.full((len(histories), max_len), pad_id, dtype=np.int64)
    lens = np.zeros(len(histories), dtype=np.int64)
    for row, hist in enumerate(histories):
        hist = list(hist)[-max_len:]
        if not hist:
            raise ValueError(f"history {row} is empty: a sequential recommender needs at least one item")
        seqs[row, : len(hist)] = hist
        lens[row] = len(hist)
    return seqs, lens
