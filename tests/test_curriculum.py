"""llara.training.curriculum: the hybrid-prompt probability per mode and the deterministic per-sample decision."""
from __future__ import annotations

import pytest

from llara.training.curriculum import CURRICULUM_MODES, hybrid_probability, use_hybrid

T = 1000


@pytest.mark.parametrize(
    "mode,start,middle,end",
    [
        ("text", 0.0, 0.0, 0.0),
        ("hybrid", 1.0, 1.0, 1.0),
        ("direct", 1.0, 1.0, 1.0),
        ("two-stage", 0.0, 1.0, 1.0),  # switch at 0.4 * T: the middle (0.5 T) is already hybrid
        ("curriculum", 0.0, 0.5, 1.0),
    ],
)
def test_probability_at_start_middle_end(mode, start, middle, end):
    assert hybrid_probability(mode, 0, T) == start
    assert hybrid_probability(mode, T // 2, T) == middle
    assert hybrid_probability(mode, T, T) == end


def test_two_stage_switches_at_the_fraction():
    assert hybrid_probability("two-stage", 399, T) == 0.0  # paper: 2 text epochs of 5
    assert hybrid_probability("two-stage", 400, T) == 1.0
    assert hybrid_probability("two-stage", 199, T, switch_fraction=0.2) == 0.0
    assert hybrid_probability("two-stage", 200, T, switch_fraction=0.2) == 1.0


def test_curriculum_is_linear_and_clamped():
    assert hybrid_probability("curriculum", 250, T) == 0.25
    assert hybrid_probability("curriculum", 5 * T, T) == 1.0  # past the end: clamped, no error


@pytest.mark.parametrize(
    "args",
    [("curriculm", 0, T), ("", 0, T), ("curriculum", 0, 0), ("curriculum", 0, -5), ("curriculum", -1, T),
     ("curriculum", 0.5, T), ("curriculum", 0, 10.0)],
)
def test_bad_inputs_raise(args):
    with pytest.raises(ValueError):
        hybrid_probability(*args)
    with pytest.raises(ValueError):
        use_hybrid(*args, sample_key=0, seed=0)


def test_numpy_ints_are_accepted():
    np = pytest.importorskip("numpy")
    assert hybrid_probability("curriculum", np.int64(250), np.int64(T)) == 0.25


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="text, hybrid, two-stage, curriculum"):
        hybrid_probability("always", 0, T)
    with pytest.raises(ValueError, match="switch_fraction"):
        hybrid_probability("two-stage", 0, T, switch_fraction=1.5)


def test_decisions_are_deterministic_and_depend_on_key_step_seed():
    def decisions(step: int, seed: int) -> list[bool]:  # one batch of 200 samples, as training decides them
        return [use_hybrid("curriculum", step, T, k, seed=seed) for k in range(200)]

    a = decisions(500, seed=1)
    assert a == decisions(500, seed=1)  # a resumed run makes the same choices
    assert a != decisions(500, seed=2)
    assert a != decisions(501, seed=1)
    assert 60 < sum(a) < 140  # p = 0.5


def test_decision_rate_follows_probability():
    keys = range(4000)
    for step, p in [(100, 0.1), (900, 0.9)]:
        rate = sum(use_hybrid("curriculum", step, T, k, seed=0) for k in keys) / len(keys)
        assert abs(rate - p) < 0.03


@pytest.mark.parametrize("mode", CURRICULUM_MODES)
def test_fixed_modes_never_depend_on_the_hash(mode):
    decisions = {use_hybrid(mode, 0, T, k, seed=s) for k in range(50) for s in range(3)}
    assert len(decisions) == 1  # at step 0 every mode has p = 0 or 1
    assert decisions == {hybrid_probability(mode, 0, T) == 1.0}
