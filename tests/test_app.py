"""The demo on a tiny trained checkpoint: handlers called directly, and the served app driven over HTTP.

The real model behind the same UI is covered by ``test_committed_model.py`` (integration) and the browser test."""
from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest

from app import handlers
from app.state import Studio
from llara.inference import ABLATIONS, Predictor

from .conftest import served_client, toy_train_args


@pytest.fixture(scope="module")
def toy_checkpoint(toy_setup, tmp_path_factory):
    import llara.train as train_mod

    out = tmp_path_factory.mktemp("app") / "ckpt"
    assert train_mod.main(toy_train_args(toy_setup, out, "--mode", "curriculum", "--head-weight", "1")) == 0
    return out


@pytest.fixture(scope="module")
def studio(toy_checkpoint) -> Studio:
    return Studio.load(toy_checkpoint, precision="fp32")


@pytest.fixture(scope="module")
def user(studio):
    """A loaded test user: (history labels, candidate labels, truth line)."""
    return handlers.load_test_user(studio, str(studio.dataset.test[0].user), 0)


def test_labels_are_unique(studio):
    assert len(set(studio.labels)) == len(studio.labels) == studio.dataset.n_items
    cat = studio.dataset.catalog
    for i, label in enumerate(studio.labels):  # the title first, then the year where known
        assert label.startswith(cat.titles[i])
        assert cat.years[i] is None or str(cat.years[i]) in label


def test_load_test_user_includes_the_true_item(studio, user):
    history, cands, truth = user
    sample = studio.dataset.test[0]
    assert history == [studio.labels[i] for i in sample.history]
    assert len(cands) == 20 and studio.labels[sample.target] in cands and not set(cands) & set(history)
    assert handlers.true_item(studio, truth) == sample.target
    with pytest.raises(gr.Error, match="not a test user"):
        handlers.load_test_user(studio, "999999")
    with pytest.raises(gr.Error, match="must be a number"):
        handlers.load_test_user(studio, "abc")


def test_redraw_is_seeded_and_keeps_the_truth(studio, user):
    history, _, truth = user
    a = handlers.draw_candidates(studio, history, 3, truth)
    assert a == handlers.draw_candidates(studio, history, 3, truth)
    assert a != handlers.draw_candidates(studio, history, 4, truth)
    assert studio.labels[handlers.true_item(studio, truth)] in a


@pytest.mark.parametrize("decode", ["rank", "head", "constrained", "generate"])
def test_predict_fills_all_three_panels(studio, user, decode):
    history, cands, truth = user
    out = handlers.predict(studio, history, cands, decode, "none", 0, truth)
    text_head, text_bars, hybrid_head, hybrid_bars, rec_head, rec_bars, status, text_prompt, hybrid_prompt, slots = out
    assert text_head.startswith(("###", "**Invalid")) and hybrid_head.startswith(("###", "**Invalid"))
    assert len(rec_bars) == 20 and abs(sum(rec_bars.values()) - 1) < 1e-6
    assert sum(k.startswith("★ ") for k in rec_bars) == 1  # the true item is marked
    if decode in ("rank", "head"):
        assert len(text_bars) == len(hybrid_bars) == 20
    assert "Predicted in" in status
    slot_labels = [label for _, label in hybrid_prompt if label]
    assert slot_labels.count("history slot") == len(history) and slot_labels.count("candidate slot") == 20
    assert not any(label in ("history slot", "candidate slot") for _, label in text_prompt)
    assert isinstance(slots, pd.DataFrame) and len(slots) == len(history) + 20


def test_ablations_move_only_the_hybrid_prompt(studio, user):
    history, cands, truth = user
    base = handlers.predict(studio, history, cands, "rank", "none", 0, truth)
    for ablation in ABLATIONS[1:]:
        out = handlers.predict(studio, history, cands, "rank", ablation, 0, truth)
        assert f"ablation: {ablation}" in out[6]
        if ablation == "no-titles":
            assert "Not run" in out[0] and out[1] == {}
            assert all(not t.strip().startswith(tuple(history)) for t, _ in out[8])
        elif ablation == "no-embeddings":
            assert out[1] == base[1]  # the text-only prompt has no slots: unchanged
            assert out[3] != base[3]  # every slot now carries the same average vector
        else:
            assert out[5] != base[5] or len(history) < 2  # the recommender sees the new order


def test_attribution_views(studio, user):
    history, cands, _ = user
    text_view, hybrid_view, bars, status = handlers.attribute(studio, history, cands, handlers.TOP_CHOICE, "grad_x_input",
                                                              "none", 0, "head")
    assert text_view and hybrid_view and "explaining" in status
    # "the model's top choice" is the answer the prediction panel shows for the same decode mode
    shown = handlers.predict(studio, history, cands, "head", "none", 0, "")
    assert shown[2].removeprefix("### ").split("\n")[0] in status.split(" · ")[1]
    assert set(bars["part"]) == {"title", "embedding"}
    assert (bars["item"].str.startswith("hybrid:") & (bars["part"] == "embedding")).sum() == len(history)
    chosen = cands[3]
    *_, status = handlers.attribute(studio, history, cands, chosen, "ablation")
    assert chosen in status and "your choice" in status


BAD_PREDICTS = [
    (dict(history=[]), "Pick at least one"),
    (dict(history=None), "Pick at least one"),
    (dict(history=["No Such Artist"]), "Not in the catalog"),
    (dict(history=["x" * 10_000]), "Not in the catalog"),
    (dict(history=["\udcff\x00 odd"]), "Not in the catalog"),
    (dict(history=[1, 2]), "must be a list"),
    (dict(candidates=[]), "candidate set is empty"),
    (dict(candidates="ONE"), "at least 2 candidates"),
    (dict(decode="beam"), "Unknown decode"),
    (dict(ablation="everything"), "Unknown ablation"),
    (dict(seed=-1), "from 0 to"),
    (dict(seed=2**40), "from 0 to"),
    (dict(seed="abc"), "whole number"),
    (dict(seed=1.5), "whole number"),
]


@pytest.mark.parametrize("change, message", BAD_PREDICTS, ids=[m for _, m in BAD_PREDICTS])
def test_bad_predict_inputs_get_a_message(studio, user, change, message):
    history, cands, truth = user
    args = {"history": history, "candidates": cands, "decode": "rank", "ablation": "none", "seed": 0, **change}
    if change.get("candidates") == "ONE":
        args["candidates"] = cands[:1]
    with pytest.raises(gr.Error, match=message):
        handlers.predict(studio, args["history"], args["candidates"], args["decode"], args["ablation"], args["seed"], truth)


def test_candidate_in_history_and_too_many_history(studio, user):
    history, cands, truth = user
    with pytest.raises(gr.Error, match="both watched and a candidate"):
        handlers.predict(studio, history, [history[0], *cands[1:]], "rank", "none", 0, truth)
    long = [label for label in studio.labels if label not in cands][:12]
    assert "10 most recent of the 12" in handlers.predict(studio, long, cands, "rank", "none", 0, "")[6]
    with pytest.raises(gr.Error, match="not among the candidates"):
        handlers.attribute(studio, history, cands, history[0], "grad_x_input")


def test_add_found_keeps_order():
    assert handlers.add_found(["a", "b"], ["c", "a"]) == ["a", "b", "c"]


def test_predictor_refuses_a_checkpoint_for_another_catalog(toy_checkpoint, tmp_path):
    import json
    import shutil

    from llara.checkpoint import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(toy_checkpoint, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["dataset"]["n_items"] += 1
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="items"):
        Predictor.load(str(bad), precision="fp32")


def test_served_app_over_http(studio):
    with served_client(studio) as client:
        history, cands, truth = client.predict(str(studio.dataset.test[0].user), 0, api_name="/load_test_user")
        out = client.predict(history, cands, "head", "none", 0, truth, api_name="/predict")
        assert len(out) == 10 and "Predicted in" in out[6]
        text_view, hybrid_view, bars, status = client.predict(history, cands, handlers.TOP_CHOICE, "grad_x_input",
                                                              "none", 0, "head", api_name="/attribute")
        assert "explaining" in status
        with pytest.raises(Exception, match="Pick at least one"):
            client.predict([], cands, "rank", "none", 0, "", api_name="/predict")
        # the server keeps serving after an error
        assert "Predicted in" in client.predict(history, cands, "rank", "none", 0, truth, api_name="/predict")[6]
