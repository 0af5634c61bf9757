"""The part comparison (``llara.serving.part_view``, ``Predictor.compare_parts``, the "Compare prompt parts" view) and the
decode default (``next``, the LLM alone, wherever the checkpoint has a next-item head), on tiny toy checkpoints."""
from __future__ import annotations

import gradio as gr
import pytest

import llara.training.train as train_mod
from app import handlers
from app.state import Studio
from llara.serving.inference import Predictor
from llara.serving.part_view import NEEDS_NEXT_HEAD, PART_COLUMNS, TEXT_ROW, changed_share

from .conftest import served_client, toy_train_args

pytestmark = pytest.mark.usefixtures("llara_cache")
NEXT = ("--title-weight", "0", "--next-weight", "1", "--max-steps", "2")
USER_ROWS = ["full", "no titles", "no items", "no user", "titles only", "items only", "user only", "nothing", TEXT_ROW]
PLAIN_ROWS = ["full", "no titles (items only)", "no items (titles only)", "nothing", TEXT_ROW]


def _train(setup, folder, *flags) -> str:
    assert train_mod.main(toy_train_args(setup, folder, *flags)) == 0
    return str(folder)


@pytest.fixture(scope="module")
def user_predictor(toy_setup, tmp_path_factory):
    """Hybrid with a user token and residual scoring, beside a text-only model (as the demo serves)."""
    root = tmp_path_factory.mktemp("parts")
    hybrid = _train(toy_setup, root / "hybrid", "--mode", "hybrid", "--user-token", "--residual", *NEXT)
    text = _train(toy_setup, root / "text", "--mode", "text", "--text-items", *NEXT)
    return Predictor.load(hybrid, precision="fp32", merge=False, text_checkpoint=text)


@pytest.fixture(scope="module")
def plain_predictor(toy_setup, tmp_path_factory):
    """Hybrid without a user token or residual scoring; it answers its text-only prompt itself."""
    folder = _train(toy_setup, tmp_path_factory.mktemp("parts-plain") / "ckpt", "--mode", "hybrid", *NEXT)
    return Predictor.load(folder, precision="fp32", merge=False)


def request_of(predictor, k: int = 0) -> tuple[list[int], list[int]]:
    sample = predictor.dataset.test[k]
    history = list(sample.history)
    return history, predictor.draw_candidates(history, seed=0, include=sample.target)


def count_passes(monkeypatch, model) -> list[int]:
    """The batch size of every ``all_item_scores`` call on ``model``."""
    calls: list[int] = []
    real = model.all_item_scores

    def counted(prompts):
        calls.append(len(prompts))
        return real(prompts)

    monkeypatch.setattr(model, "all_item_scores", counted)
    return calls


def test_next_is_the_default_decode_and_residual_stays(user_predictor, plain_predictor):
    assert user_predictor.decodes[:2] == ("next", "residual")
    assert plain_predictor.decodes[0] == "next" and "residual" not in plain_predictor.decodes


def test_changed_share_counts_pairs_ordered_the_other_way():
    assert changed_share([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert changed_share([1, 2, 3, 4], [4, 3, 2, 1]) == 1.0
    assert changed_share([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)
    assert changed_share([7], [7]) == 0.0


def test_rows_of_a_model_with_a_user_token(user_predictor, monkeypatch):
    p = user_predictor
    history, cands = request_of(p)
    hybrid_calls, text_calls = count_passes(monkeypatch, p.model), count_passes(monkeypatch, p.text_model)
    result = p.compare_parts(history, cands)
    assert [r.name for r in result.rows] == USER_ROWS and result.parts == ("titles", "items", "user")
    assert hybrid_calls == [len(USER_ROWS) - 1] and text_calls == [1]  # one batched pass per model
    assert result.row("full").kept == ("titles", "items", "user") and result.row("user only").kept == ("user",)
    assert result.row("nothing").kept == () and result.row(TEXT_ROW).source == "text"
    for r in result.rows:
        assert r.item == r.ranked[0][0] and sorted(i for i, _ in r.ranked) == sorted(cands)
        assert 0.0 <= r.changed <= 1.0 and len(r.top()) == 5
        assert all(s <= 0 for _, s in r.ranked)  # log-softmax over the candidates
    assert result.row("full").changed == 0.0
    # each removal reaches the model: its prompt differs from the full one, and so do its scores
    full = result.prompts["full"]
    assert len(result.prompts["no titles"].input_ids) < len(full.input_ids)
    assert result.prompts["no items"].blank_items and not result.prompts["no items"].blank_user
    assert result.prompts["no user"].blank_user and result.prompts["no items"].input_ids == full.input_ids
    for name in ("no titles", "no items", "no user", "nothing"):
        assert dict(result.row(name).ranked) != pytest.approx(dict(result.row("full").ranked), abs=1e-6), name


def test_full_row_and_text_row_answer_as_predict_next(user_predictor, plain_predictor):
    for p in (user_predictor, plain_predictor):
        history, cands = request_of(p, 1)
        pred = p.predict(history, cands, "next")
        result = p.compare_parts(history, cands)
        for row, kind in (("full", "hybrid"), (TEXT_ROW, "text")):
            answer = pred.answers[kind]
            assert result.row(row).item == answer.item and answer.decode == "next"
            assert dict(result.row(row).ranked) == pytest.approx(dict(answer.ranked), abs=1e-4)


def test_a_model_without_a_user_token_gets_its_own_rows_in_one_pass(plain_predictor, monkeypatch):
    p = plain_predictor
    history, cands = request_of(p)
    calls = count_passes(monkeypatch, p.model)
    result = p.compare_parts(history, cands)
    assert [r.name for r in result.rows] == PLAIN_ROWS and result.parts == ("titles", "items")
    assert calls == [len(PLAIN_ROWS)]  # the text-only prompt joins the hybrid variants' batch
    assert "user" not in result.row("full").kept


@pytest.mark.parametrize("history, candidates, message", [
    ([], None, "Pick at least one watched"),
    (None, [], "at least 2 candidates"),
    (None, "watched", "both watched and a candidate"),
    ([10_000], None, "history item id"),
])
def test_bad_input_is_refused(plain_predictor, history, candidates, message):
    h, c = request_of(plain_predictor)
    history = h if history is None else history
    candidates = c if candidates is None else [h[0], *c[1:]] if candidates == "watched" else candidates
    with pytest.raises(ValueError, match=message):
        plain_predictor.compare_parts(history, candidates)


def test_the_view_shows_every_row(user_predictor, monkeypatch):
    studio = Studio.from_predictor(user_predictor)
    history, cands = request_of(user_predictor)
    labels = [studio.labels[i] for i in history], [studio.labels[c] for c in cands]
    truth = user_predictor.dataset.test[0].target
    status, table = handlers.compare_parts(studio, *labels, {"truth": truth, "shown": None})
    assert list(table.columns) == PART_COLUMNS and list(table["prompt"]) == USER_ROWS
    assert "Compared 9 prompts" in status and "the other way round" in status
    assert table["ranking changed vs full"].iloc[0] == "reference"
    assert all(v.endswith("%") for v in table["ranking changed vs full"].iloc[1:])
    assert table["keeps"].iloc[0] == "titles + item slots + user token"
    star = "★ " + studio.labels[truth]  # the loaded user's true next movie is marked wherever it is shown
    for cell in [*table["answer"], *table["top 5 (log-softmax over the candidates)"]]:
        assert studio.labels[truth] not in cell.replace(star, ""), cell
    assert all(answer.removeprefix("★ ") in studio.by_label for answer in table["answer"])
    for bad, message in (([], "Pick at least one"), (["No Such Artist"], "Not in the catalog")):
        with pytest.raises(gr.Error, match=message):
            handlers.compare_parts(studio, bad, labels[1])
    with pytest.raises(gr.Error, match="candidate set is empty"):
        handlers.compare_parts(studio, labels[0], [])
    with pytest.raises(gr.Error, match="both watched and a candidate"):
        handlers.compare_parts(studio, labels[0], [labels[0][0], *labels[1][1:]])


def test_a_checkpoint_without_a_next_item_head_says_the_view_needs_one(studio, user):
    assert "next" not in studio.predictor.decodes  # the toy app's checkpoint has a candidate head only
    status, table = handlers.compare_parts(studio, user.h, user.c, user.state)
    assert status == f"*{NEEDS_NEXT_HEAD}*" and table.empty and list(table.columns) == PART_COLUMNS
    with pytest.raises(ValueError, match="next-item head"):
        studio.predictor.compare_parts([studio.by_label[h] for h in user.h], [studio.by_label[c] for c in user.c])


def test_the_ui_defaults_to_next_and_serves_the_comparison(user_predictor):
    from app import build_demo

    studio = Studio.from_predictor(user_predictor)
    demo = build_demo(studio)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    decode = blocks["decode"]
    assert decode.value == "next"
    assert ("residual: the recommender plus the LLM's correction", "residual") in decode.choices
    assert "the recommender plus the LLM's correction" in decode.info
    assert {"compare-parts", "parts-status", "parts-table"} <= set(blocks)
    history, cands = request_of(user_predictor)
    with served_client(studio) as client:
        status, table = client.predict([studio.labels[i] for i in history], [studio.labels[c] for c in cands],
                                       api_name="/compare_parts")
    assert "Compared 9 prompts" in status and [row[0] for row in table["data"]] == USER_ROWS


def test_the_command_line_names_both_decodes(capsys):
    from llara.serving.inference import main

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "next, the LLM alone" in help_text and "residual, the recommender plus the LLM's correction" in help_text
