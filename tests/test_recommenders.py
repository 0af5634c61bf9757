"""Recommenders: learning on a synthetic task, checkpoint round trips, bad input, committed checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llara.checkpoint import CheckpointError
from llara.data import Catalog, Sample, SequenceDataset, pad_histories
from llara.recommenders import RECOMMENDERS, build_recommender, load_recommender, save_recommender
from llara.recommenders.trainer import RecTrainConfig, evaluate, train_recommender

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 40


def synthetic_dataset(seed: int = 0) -> SequenceDataset:
    """Next item = last item + 1 (mod N): learnable from the last item alone."""
    rng = np.random.default_rng(seed)

    def sample() -> Sample:
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(3, 11))
        items = [(start + k) % N_ITEMS for k in range(length + 1)]
        return Sample(history=tuple(items[:-1]), target=items[-1])

    cat = Catalog.from_raw("movie", [f"Movie {i}" for i in range(N_ITEMS)], [str(i) for i in range(N_ITEMS)])
    return SequenceDataset("synthetic", cat, [sample() for _ in range(1500)], [sample() for _ in range(60)], [sample() for _ in range(60)])


@pytest.fixture(scope="module")
def toy() -> SequenceDataset:
    return synthetic_dataset()


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_learns_synthetic_task(name, toy):
    torch.manual_seed(0)
    before = evaluate(build_recommender(name, n_items=N_ITEMS), toy, "test", [0])["hr@1"]
    cfg = RecTrainConfig(model=name, max_epochs=15, patience=15, lr=5e-3, batch_size=128, val_seeds=1)
    model, info = train_recommender(cfg, toy, progress=False)
    losses = [row["loss"] for row in info["log"]]
    assert losses[-1] < 0.5 * losses[0]
    after = evaluate(model, toy, "test", [0, 1])["hr@1"]
    assert after > 0.5 and after > before + 0.2  # random is 1/20


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_checkpoint_round_trip(name, toy, tmp_path):
    model = build_recommender(name, n_items=N_ITEMS).eval()
    stem = save_recommender(model, tmp_path / name, {"note": "test"})
    loaded = load_recommender(stem, n_items=N_ITEMS)
    seqs, lens = pad_histories([s.history for s in toy.test], model.pad_id)
    with torch.no_grad():
        a = model.full_scores(torch.as_tensor(seqs), torch.as_tensor(lens))
        b = loaded.full_scores(torch.as_tensor(seqs), torch.as_tensor(lens))
    assert torch.equal(a, b)
    assert torch.equal(model.item_embeddings(), loaded.item_embeddings())


def test_tampered_and_truncated_checkpoints_fail(toy, tmp_path):
    stem = save_recommender(build_recommender("sasrec", n_items=N_ITEMS), tmp_path / "sasrec")
    weights = stem.with_suffix(".safetensors")
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_recommender(stem)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        load_recommender(stem)
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        load_recommender(tmp_path / "nothing")


def test_item_count_mismatch(tmp_path):
    stem = save_recommender(build_recommender("gru4rec", n_items=N_ITEMS), tmp_path / "gru4rec")
    with pytest.raises(CheckpointError, match="trained on 40 items but the dataset has 1682"):
        load_recommender(stem, n_items=1682)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="valid recommenders: sasrec, gru4rec, caser"):
        build_recommender("bert4rec", n_items=10)


@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_bad_batches(name):
    model = build_recommender(name, n_items=N_ITEMS)
    seqs, lens = pad_histories([(1, 2, 3)], model.pad_id)
    seqs, lens = torch.as_tensor(seqs), torch.as_tensor(lens)
    with pytest.raises(ValueError, match="item ids must be in 0..39"):
        model.score(seqs.clone().fill_(99), lens, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="candidate ids must be in 0..39"):
        model.score(seqs, lens, torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="every history needs 1..10 items"):
        model.score(seqs, torch.tensor([0]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"shape \(batch, 10\)"):
        model.score(seqs[:, :5], lens, torch.tensor([[1, 2]]))


def test_single_item_history_is_scored():
    model = build_recommender("caser", n_items=N_ITEMS).eval()
    seqs, lens = pad_histories([(7,)], model.pad_id)
    scores = model.full_scores(torch.as_tensor(seqs), torch.as_tensor(lens))
    assert scores.shape == (1, N_ITEMS) and torch.isfinite(scores).all()


def test_padding_does_not_leak():
    """A history's score must not depend on what sits in the padded tail positions' embeddings."""
    for name in RECOMMENDERS:
        model = build_recommender(name, n_items=N_ITEMS).eval()
        seqs, lens = pad_histories([(3, 4, 5)], model.pad_id)
        with torch.no_grad():
            a = model.full_scores(torch.as_tensor(seqs), torch.as_tensor(lens))
            model.item_emb.weight[model.pad_id].normal_()
            b = model.full_scores(torch.as_tensor(seqs), torch.as_tensor(lens))
        assert torch.allclose(a, b), name


COMMITTED = REPO / "checkpoints" / "recommenders" / "movielens"


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed MovieLens recommender checkpoints yet")
@pytest.mark.parametrize("name", sorted(RECOMMENDERS))
def test_committed_movielens_checkpoints(name):
    from llara.data import load_dataset

    ds = load_dataset("movielens")
    model = load_recommender(COMMITTED / name, n_items=ds.n_items)
    metrics = evaluate(model, ds, "test", [0])
    assert metrics["hr@1"] > 0.25  # the paper's recommenders: 0.34-0.39; random: 0.05


def test_summarize_combines_saved_results(tmp_path, capsys):
    from llara.checkpoint import write_json
    from llara.recommenders import train_rec

    def per_seed(hr1):
        return [{"seed": i, "best_val_hr@1": 0.4, "best_epoch": 10,
                 "test": {"hr@1": h, "hr@5": 0.8, "ndcg@5": 0.6}} for i, h in enumerate(hr1)]

    folder = tmp_path / "movielens"
    write_json(folder / "results_sasrec_2seeds.json", {"models": {"sasrec": per_seed([0.40, 0.44])}})
    write_json(folder / "results_caser_2seeds.json", {"models": {"caser": per_seed([0.30, 0.30])}})
    # files without a candidate stream were computed with the earlier, shared one: the table's popularity row must be too
    assert train_rec.main(["--summarize", "--seeds", "2", "--out", str(tmp_path)]) == 2
    assert "pass that --candidate-stream" in capsys.readouterr().err
    assert train_rec.main(["--summarize", "--seeds", "2", "--out", str(tmp_path), "--candidate-stream", "shared"]) == 0
    out = capsys.readouterr().out
    assert "| sasrec | 0.4200 ± 0.0283 |" in out and "| caser | 0.3000 ± 0.0000 |" in out and "0.3444" in out
    assert train_rec.main(["--summarize", "--seeds", "3", "--out", str(tmp_path)]) == 2
