"""The demo on a tiny trained checkpoint: handlers called directly, and the served app driven over HTTP.

The real model behind the same UI is covered by ``test_committed_model.py`` (integration) and the browser test."""
from __future__ import annotations

import math

import gradio as gr
import pandas as pd
import pytest
import torch

from app import charts, handlers
from llara.serving.answers import ABLATIONS, ATTRIBUTION_METHODS
from llara.serving.inference import Predictor

from .conftest import served_client

pytestmark = pytest.mark.usefixtures("llara_cache")


def chart_frame(chart) -> pd.DataFrame:
    """The rows a gr.BarPlot update carries (it stores them as columns + data)."""
    return pd.DataFrame(chart.value["data"], columns=chart.value["columns"])


def test_labels_are_unique(studio):
    assert len(set(studio.labels)) == len(studio.labels) == studio.dataset.n_items
    cat = studio.dataset.catalog
    for i, label in enumerate(studio.labels):  # the title first, then the year where known
        assert label.startswith(cat.titles[i])
        assert cat.years[i] is None or str(cat.years[i]) in label


def test_load_test_user_includes_the_true_item(studio, user):
    history, cands, truth, state = user.h, user.c, user.truth, user.state
    sample = studio.dataset.test[0]
    assert history == [studio.labels[i] for i in sample.history]
    assert len(cands) == 20 and studio.labels[sample.target] in cands and not set(cands) & set(history)
    assert handlers.true_item(state) == sample.target and studio.labels[sample.target] in truth
    assert handlers.true_item(None) is None and handlers.true_item({"truth": "**Heat**"}) is None
    with pytest.raises(gr.Error, match="not a test user"):
        handlers.load_test_user(studio, "999999")
    with pytest.raises(gr.Error, match="must be a number"):
        handlers.load_test_user(studio, "abc")


def test_redraw_is_seeded_and_keeps_the_truth(studio, user):
    history, state = user.h, user.state
    a = handlers.draw_candidates(studio, history, 3, state=state)
    assert a == handlers.draw_candidates(studio, history, 3, state=state)
    assert a != handlers.draw_candidates(studio, history, 4, state=state)
    assert studio.labels[handlers.true_item(state)] in a


def test_title_decodes_of_a_model_trained_without_the_title_loss_say_so(studio, user, monkeypatch):
    from llara.serving.answers import UNTRAINED_TITLES

    history, cands = user.h, user.c
    assert UNTRAINED_TITLES not in handlers.predict(studio, history, cands, "rank", "none", 0, None)[2]
    monkeypatch.setitem(studio.predictor.model.weights, "title", 0.0)
    for decode, told in (("rank", True), ("generate", True), ("head", False)):
        hybrid_head = handlers.predict(studio, history, cands, decode, "none", 0, None)[2]
        assert (UNTRAINED_TITLES in hybrid_head) == told, (decode, hybrid_head)


@pytest.mark.parametrize("decode", ["rank", "head", "constrained", "generate"])
def test_predict_fills_all_three_panels(studio, user, decode):
    history, cands, state = user.h, user.c, user.state
    out = handlers.predict(studio, history, cands, decode, "none", 0, state)
    (text_head, text_bars, hybrid_head, hybrid_bars, rec_head, rec_bars, status, text_prompt, hybrid_prompt, slots,
     after) = out
    assert after["truth"] == state["truth"] and after["shown"]["request"][2:] == [decode, "none", 0]
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
    # each slot says something of its own: its movie's closest movies for the recommender (never itself)
    neighbours = slots.iloc[:, 2].tolist()
    assert len(set(neighbours)) > len(neighbours) // 2
    assert all(movie not in near for movie, near in zip(slots.iloc[:, 1], neighbours))
    assert slots.iloc[:, 3].between(-1, 1).all()


def test_ablations_move_only_the_hybrid_prompt(studio, user):
    history, cands, state = user.h, user.c, user.state
    base = handlers.predict(studio, history, cands, "rank", "none", 0, state)
    for ablation in ABLATIONS[1:]:
        out = handlers.predict(studio, history, cands, "rank", ablation, 0, state)
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
    history, cands = user.h, user.c
    text_view, hybrid_view, text_chart, hybrid_chart, status, slots = handlers.attribute(
        studio, history, cands, handlers.TOP_CHOICE, "grad_x_input", "none", 0, "head")
    assert text_view and hybrid_view and "explaining" in status
    # the inspector's slot table comes back with each slot's share of the hybrid explanation
    share = slots["share of the hybrid explanation (grad_x_input)"]
    assert len(slots) == len(history) + len(cands) and share.str.endswith("%").all()
    assert 0 < sum(float(v.rstrip("%")) for v in share) <= 100.5
    # "the model's top choice" is the answer the prediction panel shows for the same decode mode
    shown = handlers.predict(studio, history, cands, "head", "none", 0, None)
    assert shown[2].removeprefix("### ").split("\n")[0] in status.split(" · ")[1]
    bars = chart_frame(hybrid_chart)
    assert set(bars["part"]) == {"title", "embedding"} and (bars["part"] == "embedding").sum() == len(history)
    assert hybrid_chart.color == "part" and hybrid_chart.colors_in_legend == []  # the label names the colours:
    assert hybrid_chart.label.endswith("(orange: title, blue: embedding)")    # gradio's legend gets cut off
    assert text_chart.color is None and text_chart.label == charts.chart_label("text", studio.words)  # titles only: one colour
    # watch order, numbered, named after the explained answer, the axis after the method
    assert hybrid_chart.sort == [f"{k}. {label[:40]}" for k, label in enumerate(history, start=1)]
    assert hybrid_chart.title.startswith("hybrid: why ") and hybrid_chart.y_title == "summed gradient × input"
    assert text_chart.title.startswith("text: why ")
    chosen = cands[3]
    *_, status, slots = handlers.attribute(studio, history, cands, chosen, "ablation")
    assert chosen in status and "your choice" in status
    share = slots["share of the hybrid explanation (ablation)"]  # ablation scores the watched movies' slots only
    assert (share[slots["slot"] == "candidate"] == "-").all() and share[slots["slot"] == "history"].str.endswith("%").all()
    _, _, _, hybrid_chart, _, slots = handlers.attribute(studio, history, cands, chosen, "deletion")
    assert (slots["share of the hybrid explanation (deletion)"] == "-").all()  # whole movies, not slots
    # one part per movie: one colour, so no legend (gr.BarPlot draws one for any colour column)
    assert hybrid_chart.color is None and set(chart_frame(hybrid_chart)["part"]) == {"whole artist"}
    assert hybrid_chart.label == charts.chart_label("hybrid", studio.words)


def test_attribution_charts_keep_watch_order_under_shuffle_and_say_when_not_run(studio, user):
    history, cands = user.h, user.c
    in_order = [f"{k}. {label[:40]}" for k, label in enumerate(history, start=1)]
    _, _, text_chart, hybrid_chart, _, _ = handlers.attribute(studio, history, cands, handlers.TOP_CHOICE,
                                                              "grad_x_input", "shuffle", 3, "head")
    for chart in (text_chart, hybrid_chart):  # the prompt lists the movies shuffled; the chart keeps watch order
        assert chart.sort == in_order and chart.title.endswith("(prompt in shuffled order)")
        assert list(dict.fromkeys(chart_frame(chart)["artist listened to"])) == in_order
    _, _, text_chart, hybrid_chart, _, _ = handlers.attribute(studio, history, cands, handlers.TOP_CHOICE,
                                                              "deletion", "no-titles", 0, "head")
    assert text_chart.value is None and "not run" in text_chart.label  # an empty plot draws no title: the label says
    assert hybrid_chart.sort == in_order and hybrid_chart.label == charts.chart_label("hybrid", studio.words)


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
    history, cands, state = user.h, user.c, user.state
    args = {"history": history, "candidates": cands, "decode": "rank", "ablation": "none", "seed": 0, **change}
    if change.get("candidates") == "ONE":
        args["candidates"] = cands[:1]
    with pytest.raises(gr.Error, match=message):
        handlers.predict(studio, args["history"], args["candidates"], args["decode"], args["ablation"], args["seed"], state)


def test_candidate_in_history_and_too_many_history(studio, user):
    history, cands, state = user.h, user.c, user.state
    with pytest.raises(gr.Error, match="both watched and a candidate"):
        handlers.predict(studio, history, [history[0], *cands[1:]], "rank", "none", 0, state)
    long = [label for label in studio.labels if label not in cands][:12]
    assert "10 most recent of the 12" in handlers.predict(studio, long, cands, "rank", "none", 0, None)[6]
    with pytest.raises(gr.Error, match="not among the candidates"):
        handlers.attribute(studio, history, cands, history[0], "grad_x_input")


def test_add_found_keeps_order_and_takes_catalog_labels_only(studio):
    a, b, c = studio.labels[:3]
    assert handlers.add_found(studio, [a, b], [c, a]) == [a, b, c]
    with pytest.raises(gr.Error, match="Not in the catalog"):
        handlers.add_found(studio, [a], ["x" * 10_000])


def test_candidates_follow_the_history_and_differ_between_histories(studio, user):
    assert handlers.follow_history(studio, [], 0, state=None) == []  # clearing the history is not an error
    first = handlers.follow_history(studio, user.h, 0, state=user.state)
    assert first == handlers.draw_candidates(studio, user.h, 0, state=user.state)
    assert studio.labels[user.state["truth"]] in first  # a loaded user's true next movie stays
    other = handlers.follow_history(studio, user.pool[:3], 0, state=None)
    assert len(set(first) & set(other)) < 10  # each history gets its own draw for the same seed


@pytest.mark.parametrize("seed", [True, 1.5, "abc"])
def test_a_seed_must_be_a_whole_number(studio, user, seed):
    with pytest.raises(gr.Error, match="whole number"):
        handlers.draw_candidates(studio, user.h, seed, state=None)


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
        out = client.predict(history, cands, "head", "none", 0, api_name="/predict")
        assert len(out) == 10 and "Predicted in" in out[6]
        # the session's state remembers the loaded user: the true next movie is starred in the recommender's bars
        assert any(c["label"].startswith("★ ") for c in out[5]["confidences"])
        text_view, hybrid_view, _, _, status, _ = client.predict(history, cands, handlers.TOP_CHOICE, "grad_x_input",
                                                                 "none", 0, "head", api_name="/attribute")
        assert "explaining" in status
        with pytest.raises(Exception, match="Pick at least one"):
            client.predict([], cands, "rank", "none", 0, api_name="/predict")
        # the server keeps serving after an error
        assert "Predicted in" in client.predict(history, cands, "rank", "none", 0, api_name="/predict")[6]


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_explain_works_under_every_ablation_and_method(studio, user, ablation, method):
    p = studio.predictor
    items = [studio.by_label[label] for label in user.h]
    cands = [studio.by_label[label] for label in user.c]
    result = p.explain(items, cands, method, ablation, seed=3, decode="head")
    assert set(result.attributions) == ({"hybrid"} if ablation == "no-titles" else {"text", "hybrid"})
    for kind, att in result.attributions.items():
        assert att.target in cands and att.target_source == "model"
        assert len(att.items) == len(items)
        for it in att.items:
            if method == "deletion":  # whole movies: one effect each, no title / slot split
                assert it.title_score is None and it.embedding_score is None and math.isfinite(it.total)
            elif ablation == "no-titles":  # no titles to remove: only the slots are scored
                assert it.title_score is None and math.isfinite(it.embedding_score)
            else:
                assert math.isfinite(it.title_score)
                assert (it.embedding_score is None) == (kind == "text")
    # the handler turns the same request into two views and a chart with a bar per scored part
    text_view, hybrid_view, _, hybrid_chart, status, _ = handlers.attribute(studio, user.h, user.c, handlers.TOP_CHOICE,
                                                                            method, ablation, 3, "head")
    bars = chart_frame(hybrid_chart)
    parts = {"whole artist"} if method == "deletion" else {"embedding"} if ablation == "no-titles" else {"title", "embedding"}
    assert set(bars["part"]) == parts and hybrid_view and "hybrid: explaining" in status


def test_explain_reuses_the_answers_the_prediction_showed(studio, user, monkeypatch):
    out = handlers.predict(studio, user.h, user.c, "head", "none", 0, user.state)
    state = out[-1]
    assert state["shown"]["chosen"].keys() == {"text", "hybrid"} and state["truth"] == user.state["truth"]
    calls = []
    real = studio.predictor.answer
    monkeypatch.setattr(studio.predictor, "answer", lambda *a, **k: calls.append(a) or real(*a, **k))
    *_, status, _ = handlers.attribute(studio, user.h, user.c, handlers.TOP_CHOICE, "grad_x_input", "none", 0, "head", state)
    assert calls == []  # the shown answers are explained as they are, not ranked again
    assert studio.labels[state["shown"]["chosen"]["hybrid"]] in status.split(" · ")[1]
    handlers.attribute(studio, user.h, user.c, handlers.TOP_CHOICE, "grad_x_input", "none", 1, "head", state)
    assert calls  # another request (here another seed) is answered afresh


def test_explain_refuses_what_predict_refuses(studio, user):
    p = studio.predictor
    items = [studio.by_label[label] for label in user.h]
    cands = [studio.by_label[label] for label in user.c]
    with pytest.raises(ValueError, match="not among the candidates"):
        p.explain(items, cands[:5], target=cands[10])
    with pytest.raises(ValueError, match="Unknown attribution method"):
        p.explain(items, cands, method="shap")
    with pytest.raises(ValueError, match="both watched and a candidate"):
        p.explain(items, [items[0], *cands[1:]])
    with pytest.raises(ValueError, match="Pick at least one watched"):
        p.explain([], cands)


def test_the_api_schema_does_not_list_the_catalog(studio):
    from app import build_demo

    demo = build_demo(studio)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for elem_id in ("history", "candidates"):
        info = blocks[elem_id].api_info()
        assert info["type"] == "array" and "enum" not in info["items"] and "catalog" in info["description"]


def test_time_spent_waiting_for_other_requests_is_reported_apart(studio, user):
    import threading
    import time

    p = studio.predictor
    items = [studio.by_label[label] for label in user.h]
    cands = [studio.by_label[label] for label in user.c]
    assert p.predict(items, cands, "head").waited < 0.2  # alone: no wait
    held = threading.Event()

    def busy() -> None:  # another request holding the model
        with p.lock:
            held.set()
            time.sleep(0.5)

    threading.Thread(target=busy).start()
    held.wait()
    result = p.predict(items, cands, "head")
    assert result.waited >= 0.3 and result.seconds >= result.waited
    assert "waiting for other requests" in handlers.summary(studio, result, None)


def test_a_hard_candidate_set_mixes_the_recommenders_best_with_random_ones(studio, user):
    p = studio.predictor
    items = [studio.by_label[label] for label in user.h]
    truth = user.state["truth"]
    hard = p.draw_candidates(items, 5, include=truth, kind="hard")
    assert len(hard) == len(set(hard)) == 20 and truth in hard and not set(hard) & set(items)
    assert hard == p.draw_candidates(items, 5, include=truth, kind="hard")  # seeded
    # half of it from the recommender's 30 best-scored unseen items (the toy catalog is too small to show that a
    # random draw holds fewer: 40 items, about 30 of them unseen)
    from llara.serving.inference import HARD_POOL

    scores = p.recommender.score_histories([items], [list(range(len(p.catalog)))])[0]
    scores = torch.where(torch.isin(torch.arange(len(scores)), torch.tensor(items)), -float("inf"), scores)
    best = set(scores.topk(HARD_POOL).indices.tolist())
    assert len(set(hard) & best) >= 10
    with pytest.raises(gr.Error, match="Unknown candidate set"):
        handlers.draw_candidates(studio, user.h, 0, "easy")


def test_two_invalid_generated_answers_are_not_called_agreement(studio):
    from types import SimpleNamespace as NS

    answers = {"text": NS(item=None), "hybrid": NS(item=None), "recommender": NS(item=3)}
    result = NS(answers=answers, seconds=1.0, waited=0.0, ablation="none", note="")
    line = handlers.summary(studio, result, None)
    assert "agree" not in line and "names none of the candidates" in line
    answers["text"], answers["hybrid"] = NS(item=3), NS(item=3)
    assert "All three agree." in handlers.summary(studio, result, None)


def test_the_recommender_is_loaded_once(studio):
    """The predictor answers with the recommender the model holds (checked against the checkpoint when loaded)."""
    assert studio.predictor.recommender is studio.predictor.model.recommender


def test_an_explanation_carries_its_history_and_decodes(studio, user):
    ids = [studio.labels.index(x) for x in user.h]
    cands = [studio.labels.index(x) for x in user.c]
    result = studio.predictor.explain(ids + ids[:1], cands, "deletion", decode="rank")  # a repeated item is dropped
    assert result.history == tuple(studio.predictor.clean_history(ids + ids[:1])[0]) and len(result.history) == len(set(ids))
    assert set(result.decodes) == set(result.prompts) and set(result.decodes.values()) <= set(studio.predictor.decodes)
