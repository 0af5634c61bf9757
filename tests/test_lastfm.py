"""LastFM end to end on the release's split (``../shared/datasets/lastfm``): a few training steps of the embedded
model from that folder, and the committed LastFM checkpoint evaluated on its test users with the baselines and
the history swap. Skipped with a reason where the folder (or the embedded model) is absent; the app's LastFM path
is tests/test_browser_lastfm.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llara.constants import LASTFM_CHECKPOINT

from .conftest import SHARED_LASTFM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lastfm_dir() -> Path:
    if not (SHARED_LASTFM / "train.jsonl").is_file():
        pytest.skip(f"the shared LastFM data is not available ({SHARED_LASTFM})")
    return SHARED_LASTFM


def test_training_on_lastfm_from_the_folder_writes_a_loadable_checkpoint(lastfm_dir, real_llm_cache, tmp_path):
    import llara.training.train as train_mod
    from llara.checkpoint import read_llara_meta
    from llara.data import load_dataset
    from llara.model.loader import load_llara

    out = tmp_path / "lastfm-run"
    args = ["--dataset", "lastfm", "--data-dir", str(lastfm_dir), "--output", str(out), "--mode", "hybrid",
            "--recommender", "gru4rec", "--title-weight", "0", "--next-weight", "1", "--item-features", "recommender",
            "--max-train-samples", "4", "--batch-size", "2", "--val-samples", "2", "--compute-dtype", "fp32"]
    assert train_mod.main(args) == 0
    meta = read_llara_meta(out)
    assert meta["step"] == 2 and meta["dataset"]["name"] == "lastfm"
    ds = load_dataset("lastfm", data_dir=lastfm_dir)
    model, _, _ = load_llara(out, dataset=ds)
    assert model.builder.catalog.domain == "artist"
    sample = ds.test[0]
    prompt = model.builder.build(sample.history, ds.candidates("test", seed=0)[0], hybrid=True)
    assert "listen" in prompt.text and model.rank_items(prompt)[0][0] in prompt.candidates


def test_the_committed_lastfm_model_is_evaluated_with_baselines_and_the_swap(lastfm_dir, real_llm_cache, tmp_path):
    from llara.evaluation.evaluate import main as evaluate

    if not (LASTFM_CHECKPOINT / "meta.json").is_file():
        pytest.skip(f"the LastFM checkpoint is not here: {LASTFM_CHECKPOINT}")
    out = tmp_path / "eval.json"
    code = evaluate(["--checkpoint", str(LASTFM_CHECKPOINT), "--dataset", "lastfm", "--data-dir", str(lastfm_dir),
                     "--decode", "next", "--candidate-seeds", "100", "--limit", "12", "--baselines", "--precision",
                     "fp32", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["samples"] == 12
    m = res["metrics"]["hybrid/next"]
    assert m["valid_ratio"] == 1.0 and 0.0 <= m["hr@1"] <= 1.0
    assert "gru4rec" in res["baselines"] and "hybrid/next - gru4rec" in res["paired"]
    swap = res["probes"]["hybrid/next"]["swap"]
    assert 0.0 <= swap["kept"] <= 1.0 and 0.0 <= swap["hr@1"] <= 1.0
