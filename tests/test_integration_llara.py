"""The real embedded SmolLM2 in nf4: a few training steps on real MovieLens prompts, then evaluation."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_nf4_train_then_evaluate(tmp_path, real_llm_cache):
    from llara import evaluate, train, train_rec

    rec_dir = tmp_path / "rec"
    # A one-epoch SASRec is enough to provide an item table; the committed one is not needed here.
    assert train_rec.main(["--model", "sasrec", "--max-epochs", "1", "--out", str(rec_dir), "--quiet", "--test-seeds", "1"]) == 0
    ckpt = tmp_path / "llara"
    rc = train.main(["--output", str(ckpt), "--precision", "nf4", "--recommender-dir", str(rec_dir), "--mode", "curriculum",
                     "--max-train-samples", "4", "--batch-size", "2", "--val-samples", "1", "--lora-targets", "q_proj,v_proj"])
    assert rc == 0
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == meta["total_steps"] == 2 and meta["precision"] == "nf4"
    assert all(row["loss"] > 0 for row in meta["log"])
    out = tmp_path / "eval.json"
    rc = evaluate.main(["--checkpoint", str(ckpt), "--prompt", "hybrid", "--decode", "all", "--seeds", "1", "--limit", "2",
                        "--json", str(out), "--batch-size", "2"])
    assert rc == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["hybrid/constrained"]["valid_ratio"] == 1.0
    for key in ("hybrid/generate", "hybrid/constrained", "hybrid/rank"):
        assert 0.0 <= metrics[key]["hr@1"] <= 1.0 and metrics[key]["samples"] == 2
