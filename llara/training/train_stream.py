"""The stream of training prompts: which samples a run trains on, and training prompt number ``g`` as a pure
function of ``(seed, g)`` (order, candidates, phrasing, text or hybrid, the parts modality dropout removes), so a
resumed run draws exactly what the uninterrupted one would have.

    python -m llara.train --output runs/stream-demo --max-train-samples 64 --modality-dropout 0.3   # what uses it
"""
from __future__ import annotations

import random

import numpy as np

from ..data import Sample, draw_candidates
from ..model.llara_model import LLaRA
from .curriculum import use_hybrid
from .train_config import TrainConfig, short_prompts


def select_samples(train: list[Sample], limit: int, strategy: str, seed: int) -> list[Sample]:
    """Sub-sample training prompts. ``recent`` walks every user's windows from the newest, one per user per round,
    so a small budget still covers all users with the behaviour closest to what val/test users are asked about."""
    if limit <= 0 or limit >= len(train):
        return list(train)
    if strategy == "random" or all(s.user == -1 for s in train):
        keep = np.random.default_rng(seed).choice(len(train), size=limit, replace=False)
        return [train[i] for i in sorted(keep)]
    by_user: dict[int, list[int]] = {}
    for i, s in enumerate(train):
        by_user.setdefault(s.user, []).append(i)
    users = sorted(by_user)
    random.Random(seed).shuffle(users)
    chosen: list[int] = []
    depth = 1
    while len(chosen) < limit:
        for u in users:
            if len(by_user[u]) >= depth:
                chosen.append(by_user[u][-depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return [train[i] for i in sorted(chosen)]


class PromptStream:
    """Training prompt number ``g`` (global position in the stream) as a pure function of ``(seed, g)``."""

    def __init__(self, model: LLaRA, samples: list[Sample], cfg: TrainConfig, total_steps: int) -> None:
        self.model, self.samples, self.cfg, self.total = model, samples, cfg, total_steps
        self._orders: dict[int, np.ndarray] = {}

    def sample(self, g: int) -> Sample:
        epoch, offset = divmod(g, len(self.samples))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))}
        return self.samples[int(self._orders[epoch][offset])]

    def prompt(self, g: int, step: int):
        s = self.sample(g)
        rng = np.random.default_rng([self.cfg.seed, 1, g])
        candidates = draw_candidates(s.history, s.target, self.model.builder.catalog, rng)
        hybrid = use_hybrid(self.cfg.mode, step, self.total, sample_key=g, seed=self.cfg.seed, switch_fraction=self.cfg.switch_fraction)
        dropped = dropped_parts(self.cfg.modality_dropout, hybrid, self.model.builder.user_token,
                                np.random.default_rng([self.cfg.seed, 3, g]),
                                items=None if self.cfg.item_dropout < 0 else self.cfg.item_dropout) if self.cfg.modality_dropout else set()
        prompt = self.model.builder.build(s.history, candidates, hybrid=hybrid, target=s.target,
                                          rng=random.Random(int(rng.integers(2**31))), titles="titles" not in dropped)
        prompt = prompt.without(dropped - {"titles"})
        if self.cfg.slot_dropout > 0 and hybrid and not dropped & {"items", "titles"}:  # an item keeps its title
            draws = np.random.default_rng([self.cfg.seed, 4, g]).random(len(prompt.history))
            prompt = prompt.without_history_slots(np.flatnonzero(draws < self.cfg.slot_dropout))
        return prompt.truncated() if short_prompts(self.cfg) else prompt


def dropped_parts(p: float, hybrid: bool, user_token: bool, rng: np.random.Generator,
                  items: float | None = None) -> set[str]:
    """Modality dropout: the parts of one hybrid training prompt to remove, each with probability ``p`` (the item
    slots with ``items`` where given), never all of them (one part, drawn at random, is kept), so every part has to
    carry the answer on its own some of the time. Text-only prompts have one part (the titles) and keep it. The
    draws are the same whatever ``items`` is, so a run without it makes the choices it always made."""
    parts = ["titles", "items"] + (["user"] if user_token else [])
    if not hybrid or p <= 0:
        return set()
    probs = {part: p for part in parts} | ({} if items is None else {"items": items})
    drop = [part for part, u in zip(parts, rng.random(len(parts))) if u < probs[part]]
    if len(drop) == len(parts):
        drop.remove(parts[int(rng.integers(len(parts)))])
    return set(drop)
