"""Does a model read the watch history? Probes that any scorer answers, and history-free baselines to beat.

A *scorer* maps ``(histories, candidate sets)`` to scores ``(B, C)``; the recommenders, the popularity baselines
and every LLaRA decode are wrapped as one (``llara.evaluation.evaluate.llm_scorer``), so every row of the results table gets
the same measures:

- **hits** on fixed candidate sets (any list of candidate seeds); ties count against the target;
- **swap test**: each user gets another user's history (a seeded derangement) with their own target and
  candidates. A model that reads the history changes its choices (SASRec keeps few); one that ranks items by a
  history-free prior keeps them all, and its HR@1 does not fall;
- **genre probe**: genre-pure histories (10 per genre) against one fixed candidate set holding popular items of
  every probed genre: the share of top-1 answers in the history's genre, and how many different answers the
  genres get;
- **paired comparison** of two rows over the same users: mean difference, bootstrap 95% interval, discordant
  users (a better / b better).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import overload

import numpy as np

from ..data import SequenceDataset
from ..data.catalog import Catalog
from ..metrics import bootstrap_ci

History = tuple[int, ...]
Scorer = Callable[[Sequence[History], Sequence[tuple[int, ...]]], np.ndarray]  # -> (B, C), higher = better

PROBE_GENRES = ("Horror", "Children's", "Sci-Fi", "Romance", "Western", "Documentary", "War")


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one cycle through all)."""
    if n < 2:
        raise ValueError(f"a swap needs at least 2 users, got {n}")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never leaves i in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@overload
def choices_and_hits(scores: np.ndarray, candidate_sets: Sequence[tuple[int, ...]],
                     targets: None = None) -> tuple[list[int | None], None]: ...
@overload
def choices_and_hits(scores: np.ndarray, candidate_sets: Sequence[tuple[int, ...]],
                     targets: Sequence[int]) -> tuple[list[int | None], np.ndarray]: ...
def choices_and_hits(scores: np.ndarray, candidate_sets: Sequence[tuple[int, ...]],
                     targets: Sequence[int] | None = None) -> tuple[list[int | None], np.ndarray | None]:
    """Top-1 item of each row (first on ties; None when every score is -inf, e.g. an invalid generated answer)
    and, with ``targets``, a hit only when the target's score beats every other candidate's."""
    choices: list[int | None] = []
    for row, cands in zip(scores, candidate_sets):
        best = int(np.argmax(row))
        choices.append(None if not np.isfinite(row[best]) else int(cands[best]))
    if targets is None:
        return choices, None
    hits = np.zeros(len(candidate_sets))
    for b, (row, cands, t) in enumerate(zip(scores, candidate_sets, targets)):
        k = list(cands).index(t)
        others = np.delete(row, k)
        hits[b] = float(np.isfinite(row[k]) and row[k] > others.max())
    return choices, hits


def hits_and_swap(scorer: Scorer, samples, candidate_sets_per_seed: dict[int, list[tuple[int, ...]]],
                  swap_seed: int | None = 0) -> dict:
    """HR@1 per candidate seed, the per-user hit averaged over seeds, and (``swap_seed`` not None) the swap test
    on the same targets and candidates: HR@1 under swap and the fraction of top-1 choices kept."""
    histories = [tuple(s.history) for s in samples]
    targets = [s.target for s in samples]
    perm = derangement(len(samples), swap_seed) if swap_seed is not None else None
    per_seed, per_user, swap_hr, kept = {}, [], [], []
    for seed, cands in candidate_sets_per_seed.items():
        choices, hits = choices_and_hits(scorer(histories, cands), cands, targets)
        per_seed[seed] = float(hits.mean())
        per_user.append(hits)
        if perm is not None:
            swapped = [histories[j] for j in perm]
            s_choices, s_hits = choices_and_hits(scorer(swapped, cands), cands, targets)
            swap_hr.append(float(s_hits.mean()))
            kept.append(float(np.mean([a == b for a, b in zip(choices, s_choices)])))
    user = np.mean(per_user, axis=0)
    values = list(per_seed.values())
    out = {"seeds": list(per_seed), "hr@1": float(np.mean(values)), "hr@1_std": float(np.std(values)),
           "hr@1_per_seed": per_seed, "hr@1_ci95": bootstrap_ci(user), "per_user": user.round(4).tolist()}
    if perm is not None:
        out["swap"] = {"seed": swap_seed, "hr@1": float(np.mean(swap_hr)), "kept": float(np.mean(kept))}
    return out


# ---- history-free baselines -------------------------------------------------------------------------------------

def popularity(ds: SequenceDataset, recent: int = 0) -> np.ndarray:
    """Item counts ``(N,)`` over the training users: every training target (``recent=0``: global popularity), or
    only each training user's last ``recent`` targets (recent popularity: what is watched *now*)."""
    counts = np.zeros(ds.n_items)
    by_user: dict[int, list[int]] = {}
    for s in ds.train:
        by_user.setdefault(s.user, []).append(s.target)
    for targets in by_user.values():
        for t in (targets[-recent:] if recent else targets):
            counts[t] += 1
    return counts


def prior_scorer(prior: np.ndarray) -> Scorer:
    """A scorer that ignores the history: each candidate scores its prior."""
    def score(histories: Sequence[History], candidate_sets: Sequence[tuple[int, ...]]) -> np.ndarray:
        return np.array([[prior[c] for c in cands] for cands in candidate_sets], dtype=float)
    return score


def recommender_scorer(recommender) -> Scorer:
    """A sequential recommender's own scores of the candidates (its ``score``: sequence state . item vector)."""
    def score(histories: Sequence[History], candidate_sets: Sequence[tuple[int, ...]]) -> np.ndarray:
        return recommender.score_histories(histories, candidate_sets).numpy()
    return score


# ---- genre probe --------------------------------------------------------------------------------------------------

def genre_probe_inputs(catalog: Catalog, prior: np.ndarray, genres: Sequence[str] = PROBE_GENRES,
                       per_genre: int = 10, length: int = 10, pool: int = 40, seed: int = 0
                       ) -> tuple[tuple[int, ...], dict[str, list[History]]]:
    """One candidate set and ``per_genre`` histories per genre.

    Genre-pure items carry the genre and none of the other probed genres. The candidates are the most popular
    pure items of each genre (20 split as evenly as the genres allow, the genre with the fewest pure items giving
    the remainder); histories are ``length`` items drawn (seeded, in random order) from the next ``pool`` most
    popular pure items of that genre, so no history item is a candidate."""
    missing = [g for g in genres if not any(g in gs for gs in catalog.genres)]
    if missing:
        raise ValueError(f"the catalog has no items of genre(s) {missing}")
    others = set(genres)
    pure = {g: sorted((i for i, gs in enumerate(catalog.genres) if g in gs and not (set(gs) & others) - {g}),
                      key=lambda i: (-prior[i], i)) for g in genres}
    n_cand = {g: 20 // len(genres) for g in genres}
    for g in sorted(genres, key=lambda g: -len(pure[g]))[: 20 - sum(n_cand.values())]:
        n_cand[g] += 1
    candidates = tuple(i for g in genres for i in pure[g][: n_cand[g]])
    rng = np.random.default_rng(seed)
    histories = {}
    for g in genres:
        source = pure[g][n_cand[g] : n_cand[g] + pool]
        if len(source) < length:
            raise ValueError(f"genre {g} has only {len(source)} pure items beyond its candidates, fewer than {length}")
        histories[g] = [tuple(int(i) for i in rng.choice(source, size=length, replace=False)) for _ in range(per_genre)]
    return candidates, histories


def genre_probe(scorer: Scorer, catalog: Catalog, prior: np.ndarray, **kwargs) -> dict:
    """Per genre: share of top-1 answers that carry the genre, and the most common answer; overall: the lowest
    share, and how many distinct answers all histories and the genres' most common answers get."""
    candidates, histories = genre_probe_inputs(catalog, prior, **kwargs)
    per_genre, all_answers, in_genre = {}, [], {}
    for g, hists in histories.items():
        choices, _ = choices_and_hits(scorer(hists, [candidates] * len(hists)), [candidates] * len(hists))
        all_answers += choices
        top = Counter(choices).most_common(1)[0][0]
        in_genre[g] = float(np.mean([c is not None and g in catalog.genres[c] for c in choices]))
        per_genre[g] = {"in_genre": in_genre[g], "top_answer": None if top is None else catalog.titles[top]}
    return {"genres": per_genre, "min_in_genre": min(in_genre.values()),
            "mean_in_genre": float(np.mean(list(in_genre.values()))),
            "distinct_answers": len(set(all_answers)),
            "distinct_top_answers": len({v["top_answer"] for v in per_genre.values()}),
            "candidates": [catalog.titles[c] for c in candidates]}


# ---- paired comparison ---------------------------------------------------------------------------------------

def paired(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """``a - b`` over the same users (each a per-user hit, possibly averaged over seeds): mean, bootstrap 95%
    interval, and the users where one is better."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired rows must cover the same users: {xa.shape} vs {xb.shape}")
    diff = xa - xb
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"diff": float(diff.mean()), "ci95": (float(lo), float(hi)),
            "a_better": int((diff > 0).sum()), "b_better": int((diff < 0).sum())}
