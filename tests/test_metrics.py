"""llara.metrics: answer matching as the paper defines validity, HR@1 = correct / all, pessimistic ties, intervals."""
from __future__ import annotations

import numpy as np
import pytest

from llara.metrics import (
    bootstrap_ci,
    hit_ratio,
    match_answer,
    match_letter,
    mean_std,
    ndcg,
    ranking_metrics,
    target_ranks,
    valid_and_hit,
)

TITLES = ["Batman", "Batman Returns", "Heat", "Fargo", "Se7en"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Batman Returns", 1),  # contains "Batman" too: the longer named title wins
        ("Batman", 0),
        (" Batman\n", 0),
        ("I pick Batman Returns, clearly.", 1),
        ("batman returns", 1),  # case-insensitive
        ("HEAT", 2),
        ("se7en", 4),
        ("Fargo\nHeat", 3),  # only the first line counts
        ("", None),  # empty output: invalid
        ("   ", None),
        ("\nFargo", None),  # first line empty
        ("Heat or Fargo", None),  # two different titles: invalid
        ("Batman and Heat", None),
        ("Toy Story", None),  # no candidate named
    ],
)
def test_match_answer(answer, expected):
    assert match_answer(answer, TITLES) == expected


def test_valid_and_hit_counts_invalid_as_miss():
    answers = ["Batman Returns", "Heat or Fargo", "", "fargo", "Batman"]
    targets = [1, 2, 0, 3, 1]  # hit, invalid, invalid, hit, valid but wrong
    out = valid_and_hit([match_answer(a, TITLES) for a in answers], targets)
    assert out == {"valid_ratio": pytest.approx(3 / 5), "hr@1": pytest.approx(2 / 5)}  # HR = correct / all
    assert valid_and_hit([], []) == {"valid_ratio": 0.0, "hr@1": 0.0}
    with pytest.raises(ValueError, match="3 choices for 2 targets"):
        valid_and_hit([0, 1, None], [0, 1])


def test_ranking_ties_count_against_the_target():
    scores = np.array([[1.0, 1.0, 0.0],  # target tied for first: rank 1, not 0
                       [0.5, 2.0, 0.1],  # target alone on top
                       [3.0, 3.0, 3.0]])  # all tied: last
    ranks = target_ranks(scores, np.array([0, 1, 2]))
    assert ranks.tolist() == [1, 0, 2]
    m = ranking_metrics(scores, np.array([0, 1, 2]))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 / np.log2(3) + 1 + 1 / np.log2(4)) / 3)
    assert hit_ratio(np.array([]), 1) == 0.0 and ndcg(np.array([]), 5) == 0.0
    assert ndcg(np.array([5]), 5) == 0.0 and ndcg(np.array([4]), 5) == pytest.approx(1 / np.log2(6))


def test_mean_std():
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.2, 0.4])
    assert mean == pytest.approx(0.3) and std == pytest.approx(np.std([0.2, 0.4], ddof=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_ci_brackets_the_mean(seed):
    hits = np.random.default_rng(seed).random(60) < 0.3
    lo, hi = bootstrap_ci(hits)
    assert 0.0 <= lo < hits.mean() < hi <= 1.0
    assert hi - lo < 0.5
    assert bootstrap_ci(hits) == (lo, hi)  # seeded: reproducible


def test_bootstrap_ci_degenerate():
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    assert bootstrap_ci(np.array([])) == (0.0, 0.0)


def test_match_letter_reads_the_label_an_answer_opens_with():
    labels = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert match_letter(" C: Crimson Tide", labels, 20) == 2
    assert match_letter("T", labels, 20) == 19 and match_letter("B Heat", labels, 20) == 1
    assert match_letter("U: Heat", labels, 20) is None  # only 20 candidates are labelled
    assert match_letter("Crimson Tide", labels, 20) is None  # a title, not a label
    assert match_letter("c: Heat", labels, 20) is None and match_letter("", labels, 20) is None
    assert match_letter("\nA: Heat", labels, 20) is None  # the paper reads the first line only
