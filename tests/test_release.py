"""The original release's MovieLens files: [item, rating] rows (JSONL and pickles), matching rows to their users,
the comparison with our samples, and evaluation on the paper's exact samples.

Most tests write a release-format folder from our own samples (with the ratings of ML-100K), so they need nothing
outside the repository. The tests marked ``shared`` read the release's own files from
``../shared/datasets/movielens-release`` (or ``$LLARA_RELEASE_DIR``) and are skipped when that folder is absent.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from llara.data import MalformedDataError, load_dataset
from llara.data.__main__ import main as data_main
from llara.data.movielens import load_ratings
from llara.data.paper_samples import RELEASE_ENV, compare, format_comparison, release_samples, with_release_samples
from llara.data.release import read_split

REPO = Path(__file__).resolve().parents[1]
SHARED_RELEASE = Path(os.environ.get(RELEASE_ENV) or REPO.parent / "shared" / "datasets" / "movielens-release")
shared = pytest.mark.skipif(not (SHARED_RELEASE / "test.jsonl").is_file(),
                            reason=f"the original release's MovieLens files are not at {SHARED_RELEASE} (set {RELEASE_ENV})")
PAD = [1682, 0]


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens")


@pytest.fixture(scope="module")
def rating_of() -> dict[tuple[int, int], int]:
    """(user, item index) -> rating."""
    r = load_ratings()
    return {(u, i - 1): x for u, i, x in zip(r["user"].tolist(), r["item"].tolist(), r["rating"].tolist())}


def release_row(sample, rating_of) -> dict:
    """A sample written as the MovieLens release writes it: [item, rating] pairs, padded with [1682, 0]."""
    pairs = [[i, rating_of[(sample.user, i)]] for i in sample.history]
    return {"seq": pairs + [PAD] * (10 - len(pairs)), "len_seq": len(pairs),
            "next": [sample.target, rating_of[(sample.user, sample.target)]]}


def write_release(folder: Path, rows: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    return folder


@pytest.fixture(scope="module")
def ours_as_release(movielens, rating_of, tmp_path_factory) -> Path:
    """Our own val/test samples in the release's format, rows in reverse user order (matching must reorder them)."""
    rows = {split: [release_row(s, rating_of) for s in reversed(movielens.split(split))] for split in ("val", "test")}
    return write_release(tmp_path_factory.mktemp("ours-release"), rows)


# ---- reading [item, rating] rows -----------------------------------------------------------------------------------

def test_pairs_are_read_with_their_ratings(ours_as_release, movielens, rating_of):
    rows = read_split(ours_as_release, "test", movielens.n_items)
    first = movielens.test[-1]  # written in reverse order
    assert rows[0].sample.history == first.history and rows[0].sample.target == first.target
    assert rows[0].ratings == tuple(rating_of[(first.user, i)] for i in (*first.history, first.target))
    assert rows[0].where.endswith("test.jsonl:1")


def as_numpy(pair: list[int]) -> tuple:
    """A pair as the release's pickles hold it: a tuple of numpy integers."""
    return tuple(np.int64(x) for x in pair)


def test_pickled_pairs_only_with_opt_in(ours_as_release, movielens, tmp_path):
    pd = pytest.importorskip("pandas")
    for split, name in (("val", "Val_data.df"), ("test", "Test_data.df")):
        rows = [json.loads(line) for line in open(ours_as_release / f"{split}.jsonl")]
        frame = pd.DataFrame([{"seq": [as_numpy(p) for p in r["seq"]], "len_seq": r["len_seq"], "next": as_numpy(r["next"])}
                              for r in rows])
        frame.to_pickle(tmp_path / name)
    with pytest.raises(PermissionError, match="Unpickling runs code"):
        read_split(tmp_path, "test", movielens.n_items)
    pickled = read_split(tmp_path, "test", movielens.n_items, allow_pickle=True)
    assert pickled[0].where.endswith("Test_data.df:row 0")
    assert [(r.sample, r.ratings) for r in pickled] == [(r.sample, r.ratings) for r in read_split(ours_as_release, "test", 1682)]


@pytest.mark.parametrize("seq_item, message", [
    ([5, 4, 1], r"test.jsonl:1: expected an item id or an \[item, rating\] pair, got \[5, 4, 1\]"),
    (["x", 4], r"test.jsonl:1: seq, len_seq and next must be integers or \[item, rating\] pairs"),
    ([5000, 4], r"test.jsonl:1: item id 5000 is out of range 0..1681"),
])
def test_malformed_pairs_name_file_and_line(tmp_path, seq_item, message):
    row = {"seq": [seq_item, [1, 4], [2, 5]] + [PAD] * 7, "len_seq": 3, "next": [3, 4]}
    write_release(tmp_path, {"test": [row]})
    with pytest.raises(MalformedDataError, match=message):
        read_split(tmp_path, "test", 1682)


# ---- matching rows to users, and swapping them in ------------------------------------------------------------------

def test_our_samples_round_trip_through_the_release_format(ours_as_release, movielens):
    """Matched to their users and ordered by user id, our own rows give back exactly our dataset."""
    same = with_release_samples(movielens, ours_as_release)
    assert same.fingerprint() == movielens.fingerprint()
    assert same.users == movielens.users and same.train is movielens.train


def test_comparison_of_ours_with_ours_agrees_everywhere(ours_as_release, movielens):
    result = compare(movielens, ours_as_release)
    for split, n in (("val", 94), ("test", 95)):
        s = result["splits"][split]
        assert s == {"rows": n, "matched": n, "our_users": n, "target": n, "history": n, "history_set": n, "tie_order": n}
    tied, total = result["ties"]["all"]
    assert total == 100_000 and 0 < tied < total


def test_a_row_out_of_time_order_is_not_a_tie_order(movielens, rating_of, tmp_path):
    ratings = load_ratings()
    when = {(u, i - 1): t for u, i, t in zip(ratings["user"].tolist(), ratings["item"].tolist(), ratings["timestamp"].tolist())}
    rows = [release_row(s, rating_of) for s in movielens.test]
    # a user whose history spans more than one timestamp: reversing it puts a later rating first
    k = next(k for k, s in enumerate(movielens.test) if len({when[(s.user, i)] for i in s.history}) > 1)
    rows[k]["seq"][: rows[k]["len_seq"]] = rows[k]["seq"][: rows[k]["len_seq"]][::-1]
    write_release(tmp_path, {"val": [release_row(s, rating_of) for s in movielens.val], "test": rows})
    test = compare(movielens, tmp_path)["splits"]["test"]
    assert test["tie_order"] == test["history"] == 94 and test["history_set"] == test["target"] == 95


def test_a_row_of_no_user_is_refused(movielens, rating_of, tmp_path):
    rows = [release_row(s, rating_of) for s in movielens.test]
    rows[3]["next"][1] = 6  # no rating is 6: no user has this pair
    write_release(tmp_path, {"val": [release_row(s, rating_of) for s in movielens.val], "test": rows})
    with pytest.raises(ValueError, match=r"test.jsonl:4: the row's \(item, rating\) pairs match 0 users of ML-100K"):
        with_release_samples(movielens, tmp_path)


def test_bare_ids_keep_the_file_order_and_cannot_be_compared(movielens, tmp_path):
    bare = {split: [{"seq": list(s.history) + [1682] * (10 - len(s.history)), "len_seq": len(s.history), "next": s.target}
                    for s in reversed(movielens.split(split))] for split in ("val", "test")}
    write_release(tmp_path, bare)
    samples = release_samples(movielens, tmp_path)
    assert [(s.history, s.target, s.user) for s in samples["test"]] == [(s.history, s.target, -1) for s in reversed(movielens.test)]
    with pytest.raises(ValueError, match=r"bare item ids; matching a row to its user needs the release's \[item, rating\] pairs"):
        compare(movielens, tmp_path)


def test_release_rows_of_training_users_are_refused(ours_as_release):
    random_split = load_dataset("movielens", split="random", seed=0)
    with pytest.raises(ValueError, match=r"belong to \d+ users this dataset trains on .*--split paper"):
        with_release_samples(random_split, ours_as_release)


def test_no_release_folder_says_how_to_give_one(movielens, monkeypatch, capsys):
    monkeypatch.delenv(RELEASE_ENV, raising=False)
    with pytest.raises(ValueError, match=rf"pass --release-dir DIR \(or set {RELEASE_ENV}\)"):
        with_release_samples(movielens, None)
    assert data_main(["compare-release"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the paper's samples need a release folder") and "Traceback" not in err
    assert data_main(["compare-release", "--release-dir", "/nonexistent/release"]) == 2
    assert "release folder /nonexistent/release does not exist" in capsys.readouterr().err


def test_compare_release_cli_prints_the_comparison(ours_as_release, capsys):
    assert data_main(["compare-release", "--release-dir", str(ours_as_release)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^test\s+95\s+95/95\s+95/95\s+95/95\s+95/95\s+95/95\s+95/95$", out, re.M), out
    assert re.search(r"share their \(user, timestamp\) with another rating of the same user: [\d,]+ of 100,000", out)


# ---- the release's own files ---------------------------------------------------------------------------------------

@shared
def test_the_releases_pickles_need_the_opt_in_and_equal_its_jsonl(movielens, tmp_path):
    pytest.importorskip("pandas")
    for name in ("Val_data.df", "Test_data.df"):
        (tmp_path / name).write_bytes((SHARED_RELEASE / name).read_bytes())
    with pytest.raises(PermissionError, match="--allow-pickle"):
        release_samples(movielens, tmp_path)
    assert release_samples(movielens, tmp_path, allow_pickle=True) == release_samples(movielens, SHARED_RELEASE)


@shared
def test_the_paper_samples_are_our_users_with_the_releases_rows(movielens):
    exact = with_release_samples(movielens, SHARED_RELEASE)
    assert [s.user for s in exact.test] == [s.user for s in movielens.test]  # the same 95 users, in the same order
    assert [s.user for s in exact.val] == [s.user for s in movielens.val]
    assert exact.train is movielens.train
    rows = [json.loads(line) for line in open(SHARED_RELEASE / "test.jsonl")]
    assert sorted((s.history, s.target) for s in exact.test) == sorted(
        (tuple(p[0] for p in r["seq"][: r["len_seq"]]), r["next"][0]) for r in rows)
    assert exact.fingerprint() != movielens.fingerprint()


@shared
def test_readme_states_what_compare_release_prints(movielens):
    """The README's data section quotes the command's output: it must stay what the command prints."""
    printed = format_comparison(compare(movielens, SHARED_RELEASE))
    readme = (REPO / "README.md").read_text()
    for line in printed.splitlines():
        assert line in readme, f"README.md does not quote this line of compare-release: {line!r}"
    test = compare(movielens, SHARED_RELEASE)["splits"]["test"]
    assert test["tie_order"] == test["rows"] == 95  # every difference is an order of tied ratings
    assert test["history"] < test["history_set"] < test["rows"] and test["target"] < test["rows"]
