"""llara.evaluation.small_model on tiny synthetic data: training, a learnable sequence rule, feature checks, the report,
the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llara.data import load_dataset
from llara.data.catalog import Catalog
from llara.data.protocol import SequenceDataset, build_samples, candidate_sets
from llara.evaluation.parts import hits_and_top1
from llara.evaluation.probes import prior_scorer
from llara.evaluation.small_model import (
    FEATURE_KINDS,
    check_features,
    evaluate_rows,
    format_table,
    item_features,
    main,
    train_small_model,
    write_compact_json,
)
from tests.conftest import TOY_DATASET, TOY_TITLES, assert_refused, run_cli, write_toy_dataset

torch.set_num_threads(1)


def successor_dataset(n_users: int = 120, length: int = 14, seed: int = 0) -> SequenceDataset:
    """Every sequence walks one fixed random cycle through the 40 toy items: the next item is set by the last one."""
    catalog = Catalog.from_raw("movie", list(TOY_TITLES), [str(i) for i in range(len(TOY_TITLES))])
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(len(catalog))
    nxt = {int(a): int(b) for a, b in zip(cycle, np.roll(cycle, -1))}
    sequences = {}
    for user in range(n_users):
        items = [int(rng.integers(len(catalog)))]
        while len(items) < length:
            items.append(nxt[items[-1]])
        sequences[user] = items
    users = {"train": list(range(0, n_users - 20)), "val": list(range(n_users - 20, n_users - 10)),
             "test": list(range(n_users - 10, n_users))}
    split = build_samples(sequences, users)
    return SequenceDataset("synthetic", catalog, split["train"], split["val"], split["test"], users=users,
                           sequences=sequences)


def test_loss_falls_on_the_toy_dataset(tmp_path):
    ds = load_dataset(TOY_DATASET, data_dir=write_toy_dataset(tmp_path / "data"))
    features = item_features("random", ds.catalog, seed=0)
    _, log = train_small_model(features, ds.train, epochs=30, batch_size=16, lr=1e-2, select="last")
    assert len(log) == 30 and "val_hr@1" not in log[0]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"], log


def test_gru_learns_a_successor_rule_far_above_chance():
    ds = successor_dataset()
    features = item_features("random", ds.catalog, seed=1)
    val_cands = ds.candidates("val", seed=0)
    model, log = train_small_model(features, ds.train, ds.val, val_cands, epochs=8, batch_size=64, lr=1e-2, seed=0)
    assert all("val_hr@1" in e for e in log)
    cands = candidate_sets(ds.test, ds.catalog, seed=3, split="test")
    hits, _ = hits_and_top1(model.score_histories([s.history for s in ds.test], cands), ds.test, cands)
    assert hits.mean() >= 0.7  # chance is 1 in 20
    # seeded: the same run gives the same model
    again, _ = train_small_model(features, ds.train, ds.val, val_cands, epochs=8, batch_size=64, lr=1e-2, seed=0)
    assert np.allclose(again.score_histories([s.history for s in ds.test], cands),
                       model.score_histories([s.history for s in ds.test], cands))


def test_feature_kinds_and_shapes_are_checked():
    catalog = successor_dataset(n_users=3).catalog
    with pytest.raises(ValueError, match="valid kinds: " + ", ".join(FEATURE_KINDS).replace("+", r"\+")):
        item_features("bogus", catalog)
    with pytest.raises(ValueError, match="needs a recommender"):
        item_features("recommender", catalog)
    random = item_features("random", catalog, seed=0)
    assert random.shape == (40, 384) and torch.allclose(random.norm(dim=-1), torch.ones(40))
    assert torch.equal(random, item_features("random", catalog, seed=0))
    assert not torch.equal(random, item_features("random", catalog, seed=1))
    for bad in (torch.zeros(39, 8), torch.zeros(40), torch.zeros(40, 0), np.zeros((40, 8))):
        with pytest.raises(ValueError, match=r"shape \(40, F\)"):
            check_features(bad, 40)
    with pytest.raises(ValueError, match="NaN"):
        check_features(torch.full((40, 8), float("nan")), 40)


def test_evaluate_rows_pairs_every_row_on_the_same_samples(tmp_path):
    ds = successor_dataset()
    model, _ = train_small_model(item_features("random", ds.catalog), ds.train, epochs=5, batch_size=64, lr=1e-2)
    scorers = {"gru": model.score_histories, "ref": prior_scorer(np.arange(ds.n_items, dtype=float))}
    report = evaluate_rows(ds, scorers, ["ref"], seeds=[0, 1], positions=3, candidate_seed=5, cold=1000)
    rows = report["rows"]
    assert set(rows) == {"paper", "positions", "cold"}
    assert rows["paper"]["gru"]["samples"] == 10 and rows["positions"]["gru"]["samples"] == 30
    assert rows["cold"]["gru"]["samples"] == 30  # every target is "cold" under a threshold of 1000
    hits = report["hits"]["gru"]
    assert set(hits["paper"]) == {"0", "1"} and set(hits["positions"]) <= {0, 1}
    assert np.mean(hits["positions"]) == pytest.approx(rows["positions"]["gru"]["hr@1"])
    diff = rows["positions"]["gru"]["minus_ref"]["diff"]
    assert diff == pytest.approx(np.mean(hits["positions"]) - np.mean(report["hits"]["ref"]["positions"]))
    assert "minus_ref" not in rows["positions"]["ref"]
    table = format_table(rows, ["ref"])
    assert table.count("\n") == 2 + 3 * 2 - 1 and "| positions (30) | gru |" in table
    none_cold = evaluate_rows(ds, scorers, ["ref"], seeds=[0], positions=3, cold=-1)["rows"]["cold"]["gru"]
    assert none_cold["samples"] == 0 and none_cold["hr@1_ci95"] is None
    write_compact_json(tmp_path / "r.json", report)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(report)) and '"positions": [' in text


@pytest.mark.parametrize("argv, expected", [
    (["--features", "bogus"], r"^error: unknown feature kind\(s\) 'bogus'; valid kinds: recommender, minilm"),
    (["--features", "minilm,minilm"], "without repeats"),
    (["--epochs", "0"], r"--epochs must be >= 1"),
    (["--seeds", "x"], "candidate seeds must be whole numbers"),
    (["--positions", "-1"], r"--positions must be >= 0"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--epochs", "two"], "invalid int value"),
])
def test_cli_rejects_bad_flags(argv, expected, capsys):
    code, out, err = run_cli(main, argv, capsys)
    assert code == 2 and out == ""
    assert_refused(code, err, expected)
    assert err.count("\n") == 1
