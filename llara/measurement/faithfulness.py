"""Are the attributions faithful? Deletion curves: remove the watched items an attribution ranks highest and see
how far the explained answer's score falls, against removing as many items at random.

    python -m llara.explain --faithfulness --users 20 --json docs/faithfulness.json

For every test user (first ``users`` with at least ``min_history`` items), both prompt kinds of the demo and every
attribution method: the method explains the model's own answer; its items are ranked by their total score (title +
embedding slot: the item's whole effect); the top-k items (k = 1, 2, 3) are *deleted from the history* (the prompt is
rebuilt without them, the user token too, so no method is scored by its own kind of ablation), and the drop of the
explained answer's score is recorded. The same is done for ``random_draws`` random sets of k items per user, shared
by every method. The score is what the attributions explain: the log-softmax over the candidates of the next-item
head for a model that has one, else the answer's log-likelihood. A faithful method's top-k drop is well above the
random drop. The target (:func:`meets_target`): the mean top-1 drop at least twice the mean random-1 drop, with the
paired 95% interval of their difference above 0. For ``deletion`` (leave-one-out) the top-1 item is by
construction the single deletion that drops the score most, so its k = 1 column is an upper bound the other methods
can be read against, not a test of it; its k = 2, 3 columns (items deleted together) are.
"""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..attribution.deletion import explained_score
from ..model.llara_model import LLaRA
from ..serving.answers import ATTRIBUTION_METHODS, PROMPT_KINDS
from ..serving.inference import Predictor

DELETION_KS = (1, 2, 3)
MIN_RANDOM_DROP = 0.01  # nats: below it, top-1 / random-1 divides by noise and is not reported


def meets_target(top1: float, random1: float, diff_low: float) -> bool:
    """The demo's faithfulness target: deleting the top-1 item drops the score at least twice as much as deleting a
    random one, and that is not chance (the paired interval of top-1 - random-1 lies above 0). Written as a
    product, not a ratio: a random drop near 0 makes the ratio divide by noise."""
    return diff_low > 0 and top1 >= 2 * max(random1, 0.0) and top1 > 0


@dataclass
class DeletionCurves:
    """Per prompt kind and method: the mean score drop after deleting the top-k items, and the random baseline."""

    users: int
    ks: tuple[int, ...]
    top: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # kind -> method -> per k: drops
    random: dict[str, list[list[float]]] = field(default_factory=dict)  # kind -> per k: drops (mean of the draws)
    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # kind -> method -> attribution seconds

    def table(self) -> list[dict]:
        """One row per prompt kind and method: mean drops for each k, the random ones, the paired difference
        top-1 - random-1 over users (bootstrap 95% interval), and top-1 / random-1 where the random drop is large
        enough for a ratio to mean something (``MIN_RANDOM_DROP``; else None)."""
        from ..evaluation.probes import paired

        rows = []
        for kind, methods in self.top.items():
            rand = [statistics.fmean(d) for d in self.random[kind]]
            for method, per_k in methods.items():
                top = [statistics.fmean(d) for d in per_k]
                ratio = top[0] / rand[0] if rand[0] >= MIN_RANDOM_DROP else None
                diff = paired(per_k[0], self.random[kind][0])
                rows.append({"prompt": kind, "method": method, "top": top, "random": rand, "ratio_top1": ratio,
                             "top1_minus_random1": diff, "meets_target": meets_target(top[0], rand[0], diff["ci95"][0]),
                             "median_seconds": statistics.median(self.seconds[kind][method])})
        return rows

    @classmethod
    def from_dict(cls, data: dict) -> DeletionCurves:
        """The curves as ``to_dict`` wrote them (e.g. to reprint a saved run's table)."""
        return cls(int(data["users"]), tuple(data["ks"]), data["top"], data["random"], data["seconds"])

    def to_dict(self) -> dict:
        return {"users": self.users, "ks": list(self.ks), "top": self.top, "random": self.random,
                "seconds": self.seconds}


def deletion_curves(predictor: Predictor, users: int = 20, methods: tuple[str, ...] = ATTRIBUTION_METHODS,
                    ks: tuple[int, ...] = DELETION_KS, random_draws: int = 3, seed: int = 0, min_history: int = 5,
                    progress: bool = True) -> DeletionCurves:
    """Deletion curves over the first ``users`` test users with ``min_history`` watched items or more (see the
    module docstring); candidates are each user's seeded draw around the true next item (``seed``)."""
    from tqdm.auto import tqdm

    if users < 1 or random_draws < 1 or not ks or min(ks) < 1:
        raise ValueError("users, random_draws and every k must be >= 1")
    if min_history <= max(ks):
        raise ValueError(f"min_history ({min_history}) must exceed the largest k ({max(ks)}): something must remain")
    unknown = sorted(set(methods) - set(ATTRIBUTION_METHODS))
    if unknown:
        raise ValueError(f"unknown attribution methods {unknown}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    samples = [s for s in predictor.dataset.test if len(s.history) >= min_history][:users]
    if not samples:
        raise ValueError(f"no test user has {min_history} or more watched items")
    rng = random.Random(seed)
    curves = DeletionCurves(len(samples), tuple(ks))
    for kind in PROMPT_KINDS:
        curves.top[kind] = {m: [[] for _ in ks] for m in methods}
        curves.random[kind] = [[] for _ in ks]
        curves.seconds[kind] = {m: [] for m in methods}
    for sample in tqdm(samples, desc="deletion curves", unit="user", disable=not progress):
        history = list(sample.history)
        candidates = predictor.draw_candidates(history, seed, include=sample.target)
        draws = {k: [rng.sample(range(len(history)), k) for _ in range(random_draws)] for k in ks}
        prompts = predictor.prompts(history, candidates)
        for kind in PROMPT_KINDS:
            prompt, model = prompts[kind], predictor.model_for(prompts[kind])
            full: dict[int, float] = {}
            drop = _drop_scorer(predictor, model, history, candidates, kind, full)
            for method in methods:
                started = time.perf_counter()
                att = predictor.attribute(prompt, method, decode=predictor.decodes[0])  # the UI's answer
                curves.seconds[kind][method].append(time.perf_counter() - started)
                if att.target not in full:
                    with predictor.lock:
                        full[att.target] = explained_score(model, prompt, att.target)
                order = sorted(range(len(history)), key=lambda i: -att.items[i].total)
                for j, k in enumerate(ks):
                    curves.top[kind][method][j].append(drop(order[:k], att.target))
            # random deletions explain the same answer the methods explained (the model's own answer)
            target = next(iter(full))
            for j, k in enumerate(ks):
                curves.random[kind][j].append(statistics.fmean(drop(d, target) for d in draws[k]))
    return curves


def _drop_scorer(predictor: Predictor, model: LLaRA, history: list[int], candidates: list[int], kind: str,
                 full: dict[int, float]) -> Callable[[list[int], int], float]:
    """``drop(removed, target)``: how far deleting the watched items at positions ``removed`` (the prompt rebuilt
    without them) lowers ``target``'s score below ``full[target]``, the full prompt's (filled in by the caller)."""
    def drop(removed: list[int], target: int) -> float:
        gone = set(removed)
        kept = [item for i, item in enumerate(history) if i not in gone]
        reduced = predictor.prompts(kept, candidates)[kind]
        with predictor.lock:
            return full[target] - explained_score(model, reduced, target)

    return drop


def format_curves(curves: DeletionCurves) -> str:
    """A Markdown table: the mean score drop per k for each method and the random baseline, the paired difference
    top-1 - random-1 with its 95% interval, and top-1 / random-1 where it is defined."""
    ks = curves.ks
    head = " | ".join(f"top-{k}" for k in ks) + " | " + " | ".join(f"random-{k}" for k in ks)
    lines = [f"| prompt | method | {head} | top-1 − random-1 (95% CI) | top-1 / random-1 | target met | seconds (median) |",
             "|---|---|" + "---|" * (2 * len(ks)) + "---|---|---|---|"]
    for row in curves.table():
        cells = " | ".join(f"{v:+.3f}" for v in row["top"] + row["random"])
        d = row["top1_minus_random1"]
        ratio = "–" if row["ratio_top1"] is None else f"{row['ratio_top1']:.2f}x"
        lines.append(f"| {row['prompt']} | {row['method']} | {cells} | {d['diff']:+.3f} ({d['ci95'][0]:+.3f} to "
                     f"{d['ci95'][1]:+.3f}) | {ratio} | {'yes' if row['meets_target'] else 'no'} | "
                     f"{row['median_seconds']:.2f} |")
    return "\n".join(lines)
