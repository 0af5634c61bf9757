"""``python -m llara.written``: the title decodes beside the next-item head, on a toy checkpoint."""
from __future__ import annotations

import json

import pytest

import llara.train as train_mod
import llara.written as written

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


def test_a_decode_the_checkpoint_lacks_is_named(writer, capsys):
    assert written.main(["--checkpoint", str(writer), "--decodes", "head", "--positions", "1", "--paper-seeds", "0"]) == 2
    assert "does not offer head" in capsys.readouterr().err


def test_bad_numbers_are_refused(writer):
    with pytest.raises(SystemExit):
        written.main(["--checkpoint", str(writer), "--positions", "-1"])
