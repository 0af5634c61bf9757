"""Next-item checkpoints end to end: trained, saved, served by ``Predictor`` (with a text-only model), attributed
and evaluated with the personalization probes and baselines (tiny toy setup from conftest)."""
from __future__ import annotations

import json

import pytest

import llara.evaluation.evaluate as evaluate_mod
import llara.training.train as train_mod
from llara.attribution.methods import Attribution
from llara.constants import USER_TOKEN
from llara.model.loader import load_llara
from llara.serving.inference import Predictor

from .conftest import TINY_HIDDEN, toy_train_args


@pytest.fixture(scope="module")
def next_ckpt(toy_setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("next-item") / "ckpt"
    assert train_mod.main(toy_train_args(toy_setup, out, "--mode", "hybrid", "--title-weight", "0", "--next-weight", "1",
                                         "--user-token", "--residual", "--distill-weight", "1", "--max-steps", "2")) == 0
    return out


@pytest.fixture(scope="module")
def text_ckpt(toy_setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-items") / "ckpt"
    assert train_mod.main(toy_train_args(toy_setup, out, "--mode", "text", "--text-items", "--title-weight", "0",
                                         "--next-weight", "1", "--max-steps", "2")) == 0
    return out


@pytest.fixture(scope="module")
def predictor(next_ckpt, text_ckpt):
    return Predictor.load(str(next_ckpt), precision="fp32", merge=False, text_checkpoint=str(text_ckpt))


@pytest.fixture(scope="module")
def request_(predictor):
    """History and candidates (target included) of the first test user, and the residual prediction."""
    sample = predictor.dataset.test[0]
    history = list(sample.history)
    cands = predictor.draw_candidates(history, seed=0, include=sample.target)
    return history, cands, predictor.predict(history, cands, "residual")


def test_checkpoints_hold_the_next_item_parts(next_ckpt, text_ckpt):
    files = json.loads((next_ckpt / "meta.json").read_text())["files"]
    assert {"next_head.safetensors", "user_projector.safetensors"} <= set(files)
    assert all((next_ckpt / name).is_file() for name in files)
    model, meta, _ = load_llara(str(next_ckpt), precision="fp32")
    assert model.next_head is not None and model.next_head.gate is not None
    assert model.builder.user_token and model.user_projector is not None
    assert model.next_head.features.shape == model.item_table.shape  # the recommender's own item table
    text, text_meta, _ = load_llara(str(text_ckpt), precision="fp32")
    assert text_meta["config"]["mode"] == "text" and text.next_head.gate is None and not text.builder.user_token
    n_items, d_feat = text.next_head.features.shape
    assert n_items == len(text.builder.catalog)
    assert d_feat == text.llm.config.hidden_size == TINY_HIDDEN != text.item_table.shape[1]  # title features


def test_predictor_serves_residual_with_a_text_model(predictor, request_):
    history, cands, pred = request_
    assert predictor.decodes[:2] == ("next", "residual") and "head" not in predictor.decodes
    assert set(pred.answers) == {"text", "hybrid", "recommender"}
    hybrid, text, rec = pred.answers["hybrid"], pred.answers["text"], pred.answers["recommender"]
    assert hybrid.source == "hybrid" and hybrid.decode == "residual" and hybrid.valid and not hybrid.note
    assert sorted(i for i, _ in hybrid.ranked) == sorted(cands) and hybrid.item == hybrid.ranked[0][0]
    assert text.source == "text" and text.decode == "next" and "residual" in text.note and "next" in text.note
    assert sorted(i for i, _ in text.ranked) == sorted(cands)
    assert rec.source == "recommender" and sorted(i for i, _ in rec.ranked) == sorted(cands)
    hp, tp = pred.prompts["hybrid"], pred.prompts["text"]
    assert USER_TOKEN in hp.text and hp.user_position is not None
    assert USER_TOKEN not in tp.text and tp.user_position is None  # the text model was trained without one
    assert predictor.model_for(tp) is predictor.text_model and predictor.model_for(hp) is predictor.model
    # the text answer is the text model's own ranking
    assert text.ranked == predictor.text_model.rank_items(tp)


def test_rankings_match_the_models(predictor, request_):
    history, cands, pred = request_
    hp = pred.prompts["hybrid"]
    assert pred.answers["hybrid"].ranked == predictor.model.rank_items(hp, residual=True)
    nxt = predictor.predict(history, cands, "next")
    assert nxt.answers["hybrid"].decode == "next" and not nxt.answers["text"].note
    assert nxt.answers["hybrid"].ranked == predictor.model.rank_items(nxt.prompts["hybrid"])
    assert nxt.answers["text"].ranked == pred.answers["text"].ranked  # same text model, same decode
    with pytest.raises(ValueError, match="head"):
        predictor.predict(history, cands, "head")


def test_text_checkpoint_must_be_text_only(next_ckpt):
    with pytest.raises(ValueError, match="text-only"):
        Predictor.load(str(next_ckpt), precision="fp32", merge=False, text_checkpoint=str(next_ckpt))


def test_attribution_explains_the_served_answer(predictor, request_):
    history, _, pred = request_
    hp, tp = pred.prompts["hybrid"], pred.prompts["text"]
    att = predictor.attribute(hp, method="ablation", decode="residual")
    assert isinstance(att, Attribution) and att.level == "item" and att.method == "ablation" and att.hybrid
    assert att.target == pred.answers["hybrid"].item
    assert att.target_title == predictor.titles[att.target]
    assert [i.item for i in att.items] == history and all(i.embedding_score is not None for i in att.items)
    # the score explained: the head's log-softmax of the target over the candidates
    head = dict(predictor.model.rank_items(hp))
    assert att.log_likelihood == pytest.approx(head[att.target], abs=1e-4)
    tok = predictor.attribute(tp, method="grad_x_input", decode="residual")
    assert tok.level == "token" and tok.method == "grad_x_input" and not tok.hybrid
    assert tok.target == pred.answers["text"].item
    assert len(tok.tokens) == len(tp.input_ids) and all(-1.0 <= t.score <= 1.0 for t in tok.tokens)
    assert all(i.embedding_score is None for i in tok.items)
    assert tok.log_likelihood == pytest.approx(dict(predictor.text_model.rank_items(tp))[tok.target], abs=1e-4)


def test_evaluate_next_item_probes_and_baselines(next_ckpt, toy_setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = evaluate_mod.main(["--checkpoint", str(next_ckpt), "--decode", "all", "--prompt", "hybrid",
                            "--candidate-seeds", "3,5", "--limit", "4", "--baselines", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"hybrid/next", "hybrid/residual"} <= set(res["metrics"]) and "hybrid/head" not in res["metrics"]
    assert res["candidate_seeds"] == [3, 5]
    for key in ("hybrid/next", "hybrid/residual", "hybrid/rank"):
        m = res["metrics"][key]
        assert m["seeds"] == 2 and m["samples"] == 4 and m["valid_ratio"] == 1.0 and 0 <= m["hr@1"] <= 1
        probe = res["probes"][key]
        assert probe["seeds"] == [3, 5] and probe["hr@1"] == pytest.approx(m["hr@1"])
        assert 0.0 <= probe["swap"]["kept"] <= 1.0 and 0.0 <= probe["swap"]["hr@1"] <= 1.0
    assert {"popularity", "recent popularity", "sasrec"} <= set(res["baselines"])
    for key in res["probes"]:
        for base in res["baselines"]:
            c = res["paired"][f"{key} - {base}"]
            assert c["a_better"] + c["b_better"] <= 4 and -1.0 <= c["diff"] <= 1.0
    capsys.readouterr()
    assert evaluate_mod.main(["--checkpoint", str(next_ckpt), "--decode", "head", "--limit", "2"]) == 2
    assert "--head-weight" in capsys.readouterr().err
    assert evaluate_mod.main(["--checkpoint", str(next_ckpt), "--candidate-seeds", "5-3"]) == 2
    assert "5-3" in capsys.readouterr().err


def test_residual_needs_next_weight(toy_setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(toy_train_args(toy_setup, tmp_path / "bad", "--residual", "--max-steps", "1"))
    assert exc.value.code == 2
    assert "--residual" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("decode", ["residual", "next"])
def test_requests_waiting_for_the_model_are_answered_in_one_batch(predictor, decode):
    """Concurrent next-item predicts are batched (llara/serving/combiner.py) and answer exactly as they do one by one."""
    import threading

    samples = predictor.dataset.test[:6]
    requests = []
    for s in samples:
        history = list(s.history)
        requests.append((history, predictor.draw_candidates(history, 0, include=s.target)))
    alone = [predictor.predict(h, c, decode) for h, c in requests]
    before = len(predictor.combiner.batch_sizes)
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests) + 1)

    def ask(i: int) -> None:
        barrier.wait()
        results[i] = predictor.predict(*requests[i], decode)

    with predictor.lock:  # the model is busy: every request arrives and waits
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        barrier.wait()
        import time

        time.sleep(0.3)
    for t in threads:
        t.join()
    assert max(predictor.combiner.batch_sizes[before:]) > 1  # at least one batch answered several requests
    for a, b in zip(alone, results):
        for kind in ("text", "hybrid"):
            assert a.answers[kind].item == b.answers[kind].item and a.answers[kind].decode == b.answers[kind].decode
            assert dict(a.answers[kind].ranked) == pytest.approx(dict(b.answers[kind].ranked), abs=1e-4)
        assert b.waited > 0


def test_a_failing_batch_raises_in_every_waiting_request():
    import threading

    from llara.serving.combiner import Combiner

    lock = threading.Lock()

    def run(payloads):
        if "bad" in payloads:
            raise ValueError("broken batch")
        return [p.upper() for p in payloads]

    combiner = Combiner(lock, run)
    assert combiner.submit("ok")[0] == "OK"
    with pytest.raises(ValueError, match="broken batch"):
        combiner.submit("bad")
    with pytest.raises(ValueError, match="max_batch"):
        Combiner(lock, run, max_batch=0)
