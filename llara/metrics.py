"""Ranking metrics over a fixed candidate set (the target is one of the candidates)."""
from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
    """0-based rank of the target among ``(N, C)`` scores; ties count against the target (pessimistic)."""
    scores = np.asarray(scores, dtype=np.float64)
    target_score = scores[np.arange(len(scores)), target_pos][:, None]
    return (scores >= target_score).sum(axis=1) - 1


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    return float((np.asarray(ranks) < k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean()) if len(ranks) else 0.0


def ranking_metrics(scores: np.ndarray, target_pos: np.ndarray) -> dict[str, float]:
    """HR@1 (argmax), HR@5 and NDCG@5."""
    ranks = target_ranks(scores, target_pos)
    return {"hr@1": hit_ratio(ranks, 1), "hr@5": hit_ratio(ranks, 5), "ndcg@5": ndcg(ranks, 5)}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def match_answer(answer: str, titles: list[str]) -> int | None:
    """Index of the one candidate title named in ``answer`` (case-insensitive substring), else ``None``.

    The paper counts an output as valid when exactly one candidate title is a substring of its first line. Taken
    literally, "Batman Returns" would also contain the candidate "Batman" and be invalid; a title contained in
    another matching title is therefore dropped first, so the longest named title wins.
    """
    line = answer.split("\n", 1)[0].casefold().strip()
    if not line:
        return None
    hits = [i for i, t in enumerate(titles) if t.casefold() in line]
    hits = [i for i in hits if not any(j != i and titles[i].casefold() in titles[j].casefold() for j in hits)]
    return hits[0] if len(hits) == 1 else None


def match_letter(answer: str, labels: str, n: int) -> int | None:
    """Index of the candidate whose list label the answer starts with (`` C: ...`` names the third), else ``None``.

    The verbalized-index reading (LlamaRec): a model trained to answer with a candidate's label names its pick by
    that label alone, whatever it writes after it. Valid when the first line opens with one of the first ``n``
    labels, alone or followed by a colon or a space."""
    line = answer.split("\n", 1)[0].strip()
    if not line or line[0] not in labels[:n] or (len(line) > 1 and line[1] not in ": "):
        return None
    return labels.index(line[0])


def valid_and_hit(choices: list[int | None], targets: list[int]) -> dict[str, float]:
    """ValidRatio = valid / all and HitRatio@1 = correct / all, exactly as the paper defines them: ``choices`` holds
    each sample's chosen item, ``None`` for an answer that names no candidate (invalid, so also a miss)."""
    if len(choices) != len(targets):
        raise ValueError(f"{len(choices)} choices for {len(targets)} targets")
    n = max(1, len(choices))
    valid = sum(c is not None for c in choices)
    correct = sum(c is not None and c == t for c, t in zip(choices, targets))
    return {"valid_ratio": valid / n, "hr@1": correct / n}


def bootstrap_ci(per_user: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users (rows resampled with replacement)."""
    per_user = np.asarray(per_user, dtype=np.float64)
    if len(per_user) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = per_user[rng.integers(0, len(per_user), size=(n_boot, len(per_user)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def cluster_paired(a, b, clusters, n_boot: int = 2000, seed: int = 0) -> dict:
    """``mean(a - b)`` over paired samples with a 95% interval from a cluster bootstrap: whole clusters (users) are
    resampled, since one user's samples are not independent; the mean is over samples (sum / count per draw).
    Also the samples where one side is better."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(np.asarray(clusters)) != len(a):
        raise ValueError(f"paired rows must cover the same samples: {a.shape}, {b.shape}, {len(np.asarray(clusters))} clusters")
    if len(a) == 0:
        raise ValueError("no samples to compare")
    diff = a - b
    ids, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(inverse, weights=diff, minlength=len(ids))  # (U,)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)  # (U,)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    means = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"diff": float(diff.mean()), "ci95": (float(lo), float(hi)), "a_better": int((diff > 0).sum()),
            "b_better": int((diff < 0).sum())}
