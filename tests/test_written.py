"""``python -m llara.written``: the title decodes beside the next-item head, on a toy checkpoint."""
from __future__ import annotations

import json

import pytest

import llara.evaluation.written as written
import llara.training.train as train_mod

from .conftest import toy_train_args


@pytest.fixture(scope="module")
def writer(toy_setup, tmp_path_factory):
    """A toy checkpoint trained with the title, next-item and follow losses."""
    out = tmp_path_factory.mktemp("writer") / "ckpt"
    assert train_mod.main(toy_train_args(toy_setup, out, "--next-weight", "1", "--title-weight", "1",
                                         "--follow-weight", "1", "--follow-top", "4")) == 0
    return out


def test_rows_and_json(writer, tmp_path, capsys):
    path = tmp_path / "w.json"
    assert written.main(["--checkpoint", str(writer), "--reference", str(writer), "--positions", "2",
                         "--paper-seeds", "0", "--json", str(path), "--decodes", "next,generate,rank"]) == 0
    shown = capsys.readouterr().out
    assert "| generate |" in shown and "next - ckpt next: +0.000" in shown
    data = json.loads(path.read_text())
    for set_name in ("paper", "positions"):
        rows = data["summary"][set_name]
        assert set(rows) == {"next", "generate", "rank"}
        assert rows["next"]["same_as_next"] == 1.0 and rows["next"]["valid_ratio"] == 1.0
        assert rows["rank"]["valid_ratio"] == 1.0  # ranking always names a candidate
        for r in rows.values():
            assert 0.0 <= r["hr@1"] <= 1.0 and 0.0 <= r["same_as_next"] <= 1.0
        # the model compared with itself: no difference at all
        assert rows["next"]["minus_reference"]["diff"] == 0.0
        assert len(data["choices"][set_name]["generate"]) == len(data["targets"][set_name])
        # the generated texts are kept, so other readings of the same answers can be derived later
        assert len(data["answers"][set_name]) == len(data["targets"][set_name])
        assert all(isinstance(a, str) for a in data["answers"][set_name])


def test_the_letter_reading_picks_the_candidate_its_opening_letter_labels():
    """Answers of a model trained to answer by letter, read by the letter: the title after it does not count."""
    from llara.data.protocol import Sample

    cands = [(10, 11, 12), (20, 21, 22), (30, 31, 32), (40, 41, 42)]
    samples = [Sample((1, 2), 12, 0), Sample((1, 2), 20, 1), Sample((1, 2), 31, 2), Sample((1, 2), 40, 3)]
    answers = [" C: Heat", "A", "D: Heat", "the one I like"]  # D is past the third candidate: invalid
    row = written.letter_row(answers, cands, samples)
    assert row["choice"] == [12, 20, None, None]
    assert row["hit"].tolist() == [1.0, 1.0, 0.0, 0.0] and row["valid"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_follow_check_compares_the_model_with_a_uniform_student(writer, tmp_path, capsys):
    path = tmp_path / "c.json"
    assert written.main(["--checkpoint", str(writer), "--decodes", "next", "--positions", "1", "--paper-seeds", "0",
                         "--follow-check", "4", "--json", str(path)]) == 0
    check = json.loads(path.read_text())["follow_check"]
    assert check["prompts"] == 4 and check["top"] == 4
    assert check["teacher_entropy"] >= 0 and check["kl_uniform"] >= -1e-6 and check["kl_model"] >= -1e-6
    assert "KL a uniform student gets" in capsys.readouterr().out


def test_a_decode_the_checkpoint_lacks_is_named(writer, capsys):
    assert written.main(["--checkpoint", str(writer), "--decodes", "head", "--positions", "1", "--paper-seeds", "0"]) == 2
    assert "does not offer head" in capsys.readouterr().err


def test_bad_numbers_are_refused(writer):
    with pytest.raises(SystemExit):
        written.main(["--checkpoint", str(writer), "--positions", "-1"])


@pytest.mark.usefixtures("llara_cache")
def test_the_app_shows_the_written_answer_beside_the_ranking(writer):
    """A checkpoint trained with the follow loss: the hybrid panel says what the LLM writes and whether its ranking
    agrees; a title decode (already the written answer) adds nothing."""
    from app import handlers
    from app.state import Studio
    from app.wording import WORDS, written_line

    studio = Studio.load(writer, precision="fp32")
    sample = studio.predictor.dataset.test[0]
    history = [studio.labels[i] for i in sample.history]
    cands = [studio.labels[i] for i in studio.predictor.draw_candidates(list(sample.history), include=sample.target)]
    result = studio.predictor.predict(list(sample.history), [studio.labels.index(c) for c in cands], "next")
    written, ranked = result.answers["written"], result.answers["hybrid"]
    assert written.decode == "generate" and written.source == "written"
    hybrid_head = handlers.predict(studio, history, cands, "next", "none", 0, None)[2]
    words = WORDS["artist"]
    expected = written_line(None if written.item is None else studio.labels[written.item], written.text,
                            studio.labels[ranked.item], words)
    assert expected in hybrid_head
    assert "written" not in studio.predictor.predict(list(sample.history), [studio.labels.index(c) for c in cands],
                                                     "generate").answers
    assert "they disagree" in written_line("A", "A", "B", words) and "the same artist" in written_line("A", "A", "A", words)
    assert "names none" in written_line(None, "zzz", "B", words)
