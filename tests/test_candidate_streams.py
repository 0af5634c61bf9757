"""Candidate streams: val and test draw independently by default, the earlier shared stream still rebuilds the
published rows, and the results tables pair only rows of one stream and one set of samples."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import llara.evaluation.evaluate as evaluate_mod
import llara.evaluation.results as results_mod
from llara.data import candidate_sets, load_dataset, sample_rng
from llara.evaluation.results_tables import group, paired_table, personalization_table

from .conftest import TOY_DATASET

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens")


def overlap(ds, stream: str, seeds=range(5)) -> tuple[float, float]:
    """Share of samples i whose target sits at the same position in val and test, and their common negatives."""
    same, common = [], []
    for seed in seeds:
        val, test = ds.candidates("val", seed, stream=stream), ds.candidates("test", seed, stream=stream)
        for v, t, sv, st in zip(val, test, ds.val, ds.test):
            same.append(v.index(sv.target) == t.index(st.target))
            common.append(len((set(v) - {sv.target}) & (set(t) - {st.target})))
    return float(np.mean(same)), float(np.mean(common))


def test_val_and_test_draw_independently(movielens):
    same, common = overlap(movielens, "split")
    assert same < 0.2 and common < 2  # independent draws: 1 in 20 positions, ~19 * 19 / 1,670 common negatives
    same, common = overlap(movielens, "shared")
    assert same > 0.8 and common > 17  # the earlier stream: val and test sample i shared their generator


def test_shared_stream_is_the_earlier_key(movielens):
    from llara.data import draw_candidates

    earlier = [draw_candidates(s.history, s.target, movielens.catalog, np.random.default_rng([3, i]))
               for i, s in enumerate(movielens.test)]
    assert movielens.candidates("test", seed=3, stream="shared") == earlier
    assert movielens.candidates("test", seed=3) != earlier


def test_dataset_stream_is_the_default_of_its_candidates(movielens):
    import dataclasses

    shared = dataclasses.replace(movielens, candidate_stream="shared")
    assert shared.candidates("val", 1) == candidate_sets(movielens.val, movielens.catalog, 1, split="val", stream="shared")
    assert shared.candidates("val", 1, stream="split") == movielens.candidates("val", 1)
    assert shared.fingerprint() == movielens.fingerprint()  # the stream changes candidates, not samples


def test_bad_stream_split_and_seed(movielens):
    with pytest.raises(ValueError, match="unknown candidate stream 'weird'; valid streams: split, shared"):
        movielens.candidates("test", 0, stream="weird")
    with pytest.raises(ValueError, match="unknown split 'dev'; valid splits: train, val, test"):
        sample_rng(0, "dev", 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        candidate_sets([], movielens.catalog, seed=-2, split="val")


@pytest.mark.parametrize("stream, folder", [("split", RESULTS), ("shared", RESULTS / "shared")])
def test_committed_sasrec_rows_are_rebuilt_by_their_stream(movielens, stream, folder):
    """docs/results/sasrec.json (default stream) and docs/results/shared/sasrec.json (the earlier one): the committed
    SASRec scores every candidate set of its stream as recorded, user by user."""
    from llara.constants import RECOMMENDER_DIR
    from llara.evaluation.probes import recommender_scorer
    from llara.metrics import target_ranks
    from llara.recommenders import load_recommender

    row = json.loads((folder / "sasrec.json").read_text())
    assert group(row) == (stream, "ours")
    score = recommender_scorer(load_recommender(RECOMMENDER_DIR / "movielens" / "sasrec", n_items=movielens.n_items))
    col = row["columns"]["rank"]
    hits = []
    for seed in range(col["seeds"]):
        cands = movielens.candidates("test", seed, stream=stream)
        target = np.array([c.index(s.target) for c, s in zip(cands, movielens.test)])
        hits.append(target_ranks(score([s.history for s in movielens.test], cands), target) == 0)
    assert np.mean(hits, axis=0).round(4).tolist() == col["per_user"]


# ---- results: one group per table ----------------------------------------------------------------------------------

def fake_row(name: str, per_user: list[float], **fields) -> dict:
    col = {"seeds": 1, "valid_ratio": 1.0, "hr@1": float(np.mean(per_user)), "hr@1_std": 0.0, "hr@1_ci95": [0.0, 1.0],
           "per_user": per_user, "probe": {"swap": {"hr@1": 0.1, "kept": 0.2}}}
    return {"row": name, "kind": "recommender", "columns": {"rank": col}, **fields}


def test_tables_pair_only_rows_of_one_group():
    a = fake_row("sasrec", [1.0, 0.0, 1.0, 1.0], candidate_stream="split", eval_samples="ours")
    b = fake_row("recent-popularity", [0.0, 0.0, 1.0, 0.0], candidate_stream="split", eval_samples="ours")
    earlier = fake_row("recent-popularity", [0.0, 0.0, 1.0, 0.0])  # no field: the earlier, shared stream
    release = fake_row("recent-popularity", [0.0, 0.0, 1.0, 0.0], candidate_stream="split", eval_samples="release")
    assert "+0.500" in paired_table([a, b], [("sasrec", "recent-popularity", "rank")])
    for other in (earlier, release):
        assert "+0.500" not in paired_table([a, other], [("sasrec", "recent-popularity", "rank")])
        line = personalization_table([a, other]).splitlines()[2]
        assert line.startswith("| sasrec |") and line.endswith("| – | – |")
    assert "+0.500 (" in personalization_table([a, b]).splitlines()[2]


def test_results_reuse_reads_one_groups_folder(tmp_path, capsys):
    rows = {"sasrec": [1.0, 0.0, 1.0, 1.0], "recent-popularity": [0.0, 0.0, 1.0, 0.0]}
    for name, per_user in rows.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(fake_row(name, per_user, candidate_stream="shared")))
    assert results_mod.main(["--reuse", "--candidate-stream", "shared", "--out", str(tmp_path), "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Rows computed with candidate stream 'shared'")
    assert "| sasrec | recommender | rank | 0.750" in out and "+0.500 (" in out
    # the same folder read as the default stream: refused, with what to do
    assert results_mod.main(["--reuse", "--out", str(tmp_path), "--plot", ""]) == 2
    err = capsys.readouterr().err
    assert "sasrec.json holds a row computed with candidate stream 'shared'" in err and "--candidate-stream" in err


def test_results_group_folders():
    assert results_mod.Group().folder() == RESULTS
    assert results_mod.Group("shared").folder() == RESULTS / "shared"
    assert results_mod.Group("split", "release").folder() == RESULTS / "release"
    assert results_mod.Group("shared", "release").folder() == RESULTS / "release-shared"


def test_results_release_samples_need_a_folder(monkeypatch, capsys):
    monkeypatch.delenv("LLARA_RELEASE_DIR", raising=False)
    assert results_mod.main(["--rows", "sasrec", "--eval-samples", "release", "--plot", ""]) == 2
    assert "pass --release-dir DIR (or set LLARA_RELEASE_DIR)" in capsys.readouterr().err


# ---- evaluate: the stream and the samples it used, recorded ------------------------------------------------------

def evaluate_json(toy_run, tmp_path, *flags: str) -> dict:
    out = tmp_path / "eval.json"
    rc = evaluate_mod.main(["--checkpoint", str(toy_run["output"]), "--decode", "rank", "--prompt", "hybrid", "--seeds", "1",
                            "--swap-seed", "-1", "--json", str(out), *flags])
    assert rc == 0
    return json.loads(out.read_text())


def test_evaluate_on_a_release_folders_samples(toy_run, toy_setup, tmp_path):
    """The toy's val rows given as a release's test rows: evaluation reads them, and records both choices."""
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(Path(toy_setup["data_dir"]) / "val.jsonl", release / "test.jsonl")
    shutil.copy(Path(toy_setup["data_dir"]) / "val.jsonl", release / "val.jsonl")
    toy = load_dataset(TOY_DATASET, data_dir=toy_setup["data_dir"])
    ours = evaluate_json(toy_run, tmp_path)
    exact = evaluate_json(toy_run, tmp_path, "--eval-samples", "release", "--release-dir", str(release))
    assert (ours["eval_samples"], exact["eval_samples"]) == ("ours", "release")
    assert ours["candidate_stream"] == exact["candidate_stream"] == "split"
    assert [r["target"] for r in ours["records"]["hybrid/rank"][0]] == [s.target for s in toy.test]
    assert [r["target"] for r in exact["records"]["hybrid/rank"][0]] == [s.target for s in toy.val]
    shared = evaluate_json(toy_run, tmp_path, "--candidate-stream", "shared")
    assert shared["candidate_stream"] == "shared"
    drawn = [sorted(int(c) for c in r["scores"]) for r in shared["records"]["hybrid/rank"][0]]  # JSON keys are strings
    assert drawn == [sorted(c) for c in toy.candidates("test", 0, stream="shared")]
    assert drawn != [sorted(c) for c in toy.candidates("test", 0)]


def test_evaluate_release_samples_without_a_folder(toy_run, monkeypatch, capsys):
    monkeypatch.delenv("LLARA_RELEASE_DIR", raising=False)
    assert evaluate_mod.main(["--checkpoint", str(toy_run["output"]), "--eval-samples", "release"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the paper's samples need a release folder") and "Traceback" not in err


@pytest.mark.parametrize("flags, header", [
    ([], "| model | prompt | decode | HR@1 |"),
    (["--eval-samples", "release"], "| model | decode | HR@1, our samples"),
    (["--eval-samples", "release"], "| model | prompt | decode | HR@1 |"),
])
def test_docs_quote_the_stored_rows(flags, header, capsys):
    """docs/results.md quotes these tables as ``python -m llara.results --reuse`` prints them from docs/results/."""
    assert results_mod.main(["--reuse", "--plot", "", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(header))
    end = next((k for k in range(start, len(lines)) if not lines[k].startswith("|")), len(lines))
    table = lines[start:end]
    assert len(table) > 5
    docs = (REPO / "docs" / "results.md").read_text()
    missing = [line for line in table if line not in docs]
    assert not missing, f"docs/results.md does not quote: {missing}"
