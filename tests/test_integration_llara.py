"""The real embedded SmolLM2 in nf4: a few training steps on real MovieLens prompts, then evaluation."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_nf4_train_then_evaluate(tmp_path, real_llm_cache):
    from llara.evaluation import evaluate
    from llara.recommenders import train_rec
    from llara.training import train

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


def test_generate_equals_the_reference_loop_on_a_committed_checkpoint(real_llm_cache):
    """The committed paper-recipe checkpoint (it writes titles): transformers' generate gives the answers of the
    project's earlier greedy loop, for a ragged batch of real prompts."""
    from llara.model.loader import load_llara

    from .test_model import reference_greedy

    model, _, ds = load_llara("checkpoints/llara/movielens-sasrec-curriculum", precision="fp32")
    samples = ds.split("test")[:3]
    cands = ds.candidates("test", seed=0)[:3]
    prompts = [model.builder.build(s.history[-k:], c, hybrid=h) for s, c, k, h in zip(samples, cands, (10, 4, 7), (True, False, True))]
    answers = model.generate(prompts, max_new_tokens=24)
    assert answers == reference_greedy(model, prompts, 24)
    assert sum(a in model.builder.titles for a in answers) >= 2  # the answers are titles, not empty lines
