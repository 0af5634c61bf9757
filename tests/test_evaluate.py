"""python -m llara.evaluate on the tiny trained checkpoint (conftest ``toy_run``), and ``summarize`` by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

import llara.evaluation.evaluate as evaluate_mod
from llara.data import load_dataset
from llara.evaluation.evaluate import summarize

from .conftest import TOY_DATASET

KINDS, DECODES, SEEDS, LIMIT = ("text", "hybrid"), ("generate", "constrained", "rank"), 2, 4


@pytest.fixture(scope="module")
def results(toy_run, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "out.json"
    rc = evaluate_mod.main(["--checkpoint", str(toy_run["output"]), "--decode", "all", "--prompt", "both",
                            "--seeds", str(SEEDS), "--limit", str(LIMIT), "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def dataset(toy_setup):
    return load_dataset(TOY_DATASET, data_dir=toy_setup["data_dir"])


def test_every_prompt_and_decode_reported(results, dataset):
    keys = {f"{k}/{d}" for k in KINDS for d in DECODES}
    assert set(results["metrics"]) == keys == set(results["records"])
    assert results["samples"] == LIMIT < len(dataset.test) and results["split"] == "test"
    for key, m in results["metrics"].items():
        assert m["seeds"] == SEEDS and m["samples"] == LIMIT
        for name in ("valid_ratio", "hr@1", "hr@5", "ndcg@5"):
            if name in m:
                assert 0.0 <= m[name] <= 1.0, (key, name, m[name])
        lo, hi = m["hr@1_ci95"]
        assert 0.0 <= lo <= m["hr@1"] <= hi <= 1.0, key
        assert m["hr@1"] <= m["valid_ratio"], key  # an invalid answer is a miss
        assert ("ndcg@5" in m) == key.endswith("/rank")


def test_records_per_seed(results, dataset):
    targets = [s.target for s in dataset.test[:LIMIT]]
    for key, per_seed in results["records"].items():
        assert len(per_seed) == SEEDS, key
        for records in per_seed:
            assert [r["target"] for r in records] == targets, key
            for r in records:
                assert r["valid"] == (r["choice"] is not None) and (not r["hit"] or r["valid"])
                assert r["hit"] == (r["choice"] == r["target"])
            hr = np.mean([r["hit"] for r in records])
            assert 0.0 <= hr <= 1.0
        assert results["metrics"][key]["hr@1"] == pytest.approx(np.mean([[r["hit"] for r in rs] for rs in per_seed]))


def test_constrained_is_always_valid(results):
    for kind in KINDS:
        m = results["metrics"][f"{kind}/constrained"]
        assert m["valid_ratio"] == 1.0 and m["valid_ratio_std"] == 0.0
        assert results["metrics"][f"{kind}/rank"]["valid_ratio"] == 1.0


def test_generate_answers_are_first_lines(results):
    for kind in KINDS:
        for records in results["records"][f"{kind}/generate"]:
            assert all(isinstance(r["answer"], str) and "\n" not in r["answer"] for r in records)


def test_rank_hr1_is_the_share_of_top_scored_targets(results, dataset):
    for kind in KINDS:
        per_seed = results["records"][f"{kind}/rank"]
        tops = []
        for seed, records in enumerate(per_seed):
            cands = dataset.candidates("test", seed=seed)
            for r, c in zip(records, cands):
                scores = {int(k): v for k, v in r["scores"].items()}  # JSON keys are strings
                assert sorted(scores) == sorted(c)  # the seed's fixed candidate set, 20 items
                best = max(scores.values())
                tops.append(r["target"] in [i for i, s in scores.items() if s == best] and r["choice"] == r["target"])
                assert r["choice"] in [i for i, s in scores.items() if s == best]
                # pessimistic rank: the target placed after every candidate with a higher or equal score
                order = sorted(scores, key=lambda i: (-scores[i], i == r["target"]))
                assert r["target_rank"] == order.index(r["target"])
        assert results["metrics"][f"{kind}/rank"]["hr@1"] == pytest.approx(np.mean(tops))


def test_text_and_hybrid_share_candidates(results):
    for seed in range(SEEDS):
        text, hybrid = results["records"]["text/rank"][seed], results["records"]["hybrid/rank"][seed]
        assert [sorted(r["scores"]) for r in text] == [sorted(r["scores"]) for r in hybrid]


def test_summarize_by_hand():
    def answered(choice, target):  # a record as evaluate_samples writes it (None: an answer naming no candidate)
        return {"choice": choice, "target": target, "valid": choice is not None, "hit": choice == target}

    # per seed: hit, invalid, valid but wrong, hit / valid but wrong, invalid, hit, hit
    gen = [[answered(1, 1), answered(None, 0), answered(2, 0), answered(3, 3)],
           [answered(2, 1), answered(None, 0), answered(2, 2), answered(3, 3)]]
    m = summarize(gen, "generate")
    assert m["valid_ratio"] == 0.75 and m["valid_ratio_std"] == 0.0
    assert m["hr@1"] == pytest.approx(0.5) and m["hr@1_std"] == 0.0  # correct / all, invalid counted as misses
    lo, hi = m["hr@1_ci95"]
    assert lo <= 0.5 <= hi

    def rec(scores, target, choice):
        return {"scores": scores, "target": target, "choice": choice, "valid": True, "hit": choice == target}

    rank = [[rec({3: -1.0, 7: -2.0, 9: -3.0}, 3, 3), rec({3: -1.0, 7: -1.0, 9: -3.0}, 7, 3)]]
    m = summarize(rank, "rank")
    assert m["hr@1"] == 0.5 and m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3)) / 2)  # the tie counts against the target


def test_seeds_must_be_positive(capsys):
    assert evaluate_mod.main(["--base-model", "x", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1"


def test_zero_shot_base_model(toy_setup, tmp_path):
    """--base-model evaluates the untrained LLM (no LoRA) on the same candidates."""
    out = tmp_path / "zero.json"
    rc = evaluate_mod.main(["--base-model", toy_setup["base_model"], "--data-dir", toy_setup["data_dir"], "--dataset", TOY_DATASET,
                            "--recommender-dir", toy_setup["rec_dir"], "--prompt", "text", "--decode", "constrained",
                            "--seeds", "1", "--limit", "3", "--json", str(out), "--precision", "fp32"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert "zero-shot" in result["model"] and result["metrics"]["text/constrained"]["valid_ratio"] == 1.0
