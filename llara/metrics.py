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
