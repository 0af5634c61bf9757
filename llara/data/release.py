"""Loader for the original LLaRA release's directory format (LastFM, Steam, MovieLens folders).

A folder holds ``id2name.txt`` (lines ``id::name``) and one file per split with rows ``seq`` (10 ids,
right-padded with the padding id = number of items), ``len_seq`` and ``next``. The MovieLens release writes every
item as an ``[item, rating]`` pair instead (``seq`` padded with ``[n_items, 0]``, ``next`` a pair too); both forms
are read, and the ratings are kept beside the sample (``ReleaseRow``). Splits are read from
``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``. The release itself ships pandas pickles
(``train_data.df``, ``Val_data.df``, ``Test_data.df``); unpickling runs arbitrary code, so those are read only
with ``allow_pickle=True`` and only when no JSONL file is present.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .protocol import MIN_HISTORY, SPLITS, Sample, SequenceDataset

JSONL_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
PICKLE_FILES = {"train": "train_data.df", "val": "Val_data.df", "test": "Test_data.df"}


class MalformedDataError(ValueError):
    """A data file does not follow the expected format; the message names the file and line."""


def read_id2name(path: Path, domain: str) -> Catalog:
    """``id::name`` lines with ids 0..N-1 in order."""
    raw_titles: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            head, sep, name = line.partition("::")
            if not sep or not head.strip().isdigit():
                raise MalformedDataError(f"{path}:{lineno}: expected 'id::name', got {line[:80]!r}")
            if int(head) != len(raw_titles):
                raise MalformedDataError(f"{path}:{lineno}: expected id {len(raw_titles)}, got {int(head)} (ids must run 0..N-1)")
            raw_titles.append(name)
    if not raw_titles:
        raise MalformedDataError(f"{path}: no items")
    return Catalog.from_raw(domain, raw_titles, [str(i) for i in range(len(raw_titles))])


@dataclass(frozen=True)
class ReleaseRow:
    """One row of a release file: its sample, and the ratings of its history items then its target where the file
    writes ``[item, rating]`` pairs (empty for bare item ids)."""

    where: str
    sample: Sample
    ratings: tuple[int, ...] = ()


def _item_and_rating(value: Any, where: str) -> tuple[int, int | None]:
    """A bare item id, or an ``[item, rating]`` pair (a list, a tuple or a pickled array). ``value`` is whatever the
    file held: ``int`` raises on anything it cannot read, and that becomes a MalformedDataError."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays from a pickle
        value = value.tolist()
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise MalformedDataError(f"{where}: expected an item id or an [item, rating] pair, got {value!r}")
    try:
        if isinstance(value, (list, tuple)):
            return int(value[0]), int(value[1])
        return int(value), None
    except (TypeError, ValueError) as err:
        raise MalformedDataError(f"{where}: seq, len_seq and next must be integers or [item, rating] pairs ({err})") from err


def _parse_row(row: object, n_items: int, where: str) -> ReleaseRow | None:
    """Validate one ``seq/len_seq/next`` row; ``None`` when its history is shorter than ``MIN_HISTORY``."""
    if not isinstance(row, dict) or not {"seq", "len_seq", "next"} <= set(row):
        raise MalformedDataError(f"{where}: expected an object with keys seq, len_seq, next")
    seq, length = row["seq"], row["len_seq"]
    if hasattr(seq, "tolist"):
        seq = seq.tolist()
    if not isinstance(seq, (list, tuple)):
        raise MalformedDataError(f"{where}: seq must be a list, got {type(seq).__name__}")
    pairs = [_item_and_rating(v, where) for v in seq]
    target, target_rating = _item_and_rating(row["next"], where)
    try:
        length = int(length)
    except (TypeError, ValueError) as err:
        raise MalformedDataError(f"{where}: seq, len_seq and next must be integers ({err})") from err
    if not 0 <= length <= len(pairs):
        raise MalformedDataError(f"{where}: len_seq={length} is outside 0..{len(pairs)}")
    history = [item for item, _ in pairs[:length]]
    if not 0 <= target < n_items:
        raise MalformedDataError(f"{where}: item id {target} is out of range 0..{n_items - 1}")
    if len(history) < MIN_HISTORY:
        # Dropped unchecked: the release's first row per user has len_seq=1 over an all-padding seq.
        return None
    for item in history:
        if not 0 <= item < n_items:
            raise MalformedDataError(f"{where}: item id {item} is out of range 0..{n_items - 1}")
    ratings = [r for _, r in pairs[:length]] + [target_rating]
    rated = tuple(r for r in ratings if r is not None)
    return ReleaseRow(where, Sample(history=tuple(history), target=target), rated if len(rated) == len(ratings) else ())


def _rows_jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedDataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err


def rows_from_pickle(path: Path):
    import pandas as pd  # only the opt-in pickle path needs pandas

    frame = pd.read_pickle(path)  # runs code from the file: reached only with allow_pickle=True
    for index, row in enumerate(frame.to_dict("records")):
        yield f"{path}:row {index}", row  # _parse_row reads lists, tuples and arrays alike


def _split_rows(folder: Path, split: str, allow_pickle: bool):
    """The raw rows of one split: from its JSONL file, else (only with ``allow_pickle``) from its pickle."""
    jsonl, pickle_file = folder / JSONL_FILES[split], folder / PICKLE_FILES[split]
    if jsonl.is_file():
        return _rows_jsonl(jsonl)
    if pickle_file.is_file() and allow_pickle:
        return rows_from_pickle(pickle_file)
    if pickle_file.is_file():
        raise PermissionError(
            f"{folder} has only the pickle {pickle_file.name} for the {split} split. Unpickling runs code from the "
            "file: convert it to JSONL, or pass --allow-pickle (allow_pickle=True) if you trust its source."
        )
    raise FileNotFoundError(f"{folder} has no {JSONL_FILES[split]} (or {PICKLE_FILES[split]})")


def read_split(folder: str | Path, split: str, n_items: int, allow_pickle: bool = False) -> list[ReleaseRow]:
    """The rows of one split of a release folder, validated against a catalog of ``n_items`` items; rows with
    fewer than ``MIN_HISTORY`` history items are dropped, as in the paper."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    return [r for where, raw in _split_rows(folder, split, allow_pickle) if (r := _parse_row(raw, n_items, where)) is not None]


def load(folder: str | Path, name: str, domain: str, allow_pickle: bool = False) -> SequenceDataset:
    """Read a release folder; rows with fewer than ``MIN_HISTORY`` history items are dropped, as in the paper."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    id2name = folder / "id2name.txt"
    if not id2name.is_file():
        raise FileNotFoundError(f"{folder} has no id2name.txt (lines 'id::name')")
    catalog = read_id2name(id2name, domain)
    splits = {split: [r.sample for r in read_split(folder, split, len(catalog), allow_pickle)] for split in SPLITS}
    return SequenceDataset(
        name=name,
        catalog=catalog,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        n_interactions=0,
    )
