"""Deletion curves (llara/measurement/faithfulness.py) on the toy checkpoint: what is deleted, what is measured, bad input."""
from __future__ import annotations

import math

import pytest

from llara.attribution.deletion import explained_score
from llara.measurement.faithfulness import deletion_curves, format_curves, meets_target
from llara.serving.answers import ATTRIBUTION_METHODS, PROMPT_KINDS

pytestmark = pytest.mark.usefixtures("llara_cache")


@pytest.fixture(scope="module")
def curves(studio):
    return deletion_curves(studio.predictor, users=3, random_draws=2, min_history=4, progress=False)


def test_every_method_and_prompt_kind_gets_a_curve(curves):
    rows = curves.table()
    assert {(r["prompt"], r["method"]) for r in rows} == {(k, m) for k in PROMPT_KINDS for m in ATTRIBUTION_METHODS}
    for r in rows:
        assert len(r["top"]) == len(r["random"]) == 3 and all(math.isfinite(v) for v in r["top"] + r["random"])
        assert r["median_seconds"] > 0
    assert all(len(drops) == curves.users == 3 for per_k in curves.random.values() for drops in per_k)
    table = format_curves(curves)
    assert table.count("\n") == 1 + len(rows) and "top-1 / random-1" in table and "target met" in table
    assert all(isinstance(r["meets_target"], bool) for r in rows)


def test_deletions_top_1_is_the_largest_single_deletion(studio, curves):
    """Leave-one-out scores every single deletion, so its top-1 drop is the largest one (the upper bound the other
    methods' top-1 is read against): the curve's entry equals the attribution's best item score."""
    p = studio.predictor
    sample = next(s for s in p.dataset.test if len(s.history) >= 4)
    history = list(sample.history)
    cands = p.draw_candidates(history, 0, include=sample.target)
    for kind in PROMPT_KINDS:
        att = p.attribute(p.prompts(history, cands)[kind], "deletion", decode=p.decodes[0])
        assert curves.top[kind]["deletion"][0][0] == pytest.approx(max(it.total for it in att.items), abs=1e-4)


@pytest.mark.parametrize("top1, random1, low, met", [
    (0.10, 0.04, 0.01, True),   # 2.5x, interval above 0
    (0.07, 0.04, 0.01, False),  # under 2x
    (0.10, 0.04, -0.01, False),  # the interval holds 0: could be chance
    (0.05, -0.02, 0.02, True),  # random deletions raise the score on average: any clear drop is more
    (-0.01, -0.05, 0.01, False),  # no drop at all
])
def test_the_target_needs_twice_the_random_drop_and_an_interval_above_0(top1, random1, low, met):
    assert meets_target(top1, random1, low) is met


def test_a_drop_is_the_score_lost_by_deleting_the_top_items(studio, curves):
    """Recompute one entry by hand: the top-1 item of the first user's hybrid ablation attribution, deleted."""
    p = studio.predictor
    sample = next(s for s in p.dataset.test if len(s.history) >= 4)
    history = list(sample.history)
    cands = p.draw_candidates(history, 0, include=sample.target)
    prompt = p.prompts(history, cands)["hybrid"]
    att = p.attribute(prompt, "ablation", decode=p.decodes[0])
    top = max(range(len(history)), key=lambda i: att.items[i].total)
    reduced = p.prompts([h for i, h in enumerate(history) if i != top], cands)["hybrid"]
    expected = explained_score(p.model, prompt, att.target) - explained_score(p.model, reduced, att.target)
    assert curves.top["hybrid"]["ablation"][0][0] == pytest.approx(expected, abs=1e-4)


def test_bad_settings_are_refused(studio):
    with pytest.raises(ValueError, match="must exceed the largest k"):
        deletion_curves(studio.predictor, users=1, min_history=3)
    with pytest.raises(ValueError, match="unknown attribution methods"):
        deletion_curves(studio.predictor, users=1, methods=("shap",), min_history=4)
    with pytest.raises(ValueError, match=">= 1"):
        deletion_curves(studio.predictor, users=0)


def test_a_saved_run_reprints_with_reuse(curves, tmp_path, capsys):
    import llara.measurement.explain as attribute_mod
    from llara.checkpoint import write_json

    saved = tmp_path / "faith.json"
    write_json(saved, {"checkpoint": "ckpt", "text_checkpoint": None, "precision": "fp32", "curves": curves.to_dict()})
    assert attribute_mod.main(["--faithfulness", "--reuse", "--json", str(saved)]) == 0
    out = capsys.readouterr().out
    assert format_curves(curves) in out and "3 test users" in out
    assert attribute_mod.main(["--faithfulness", "--reuse"]) == 2  # nothing saved to reprint
    assert "--reuse needs --json" in capsys.readouterr().err
