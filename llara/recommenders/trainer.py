"""Training and evaluation of the sequential recommenders (BCE with one sampled negative, early stopping)."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import option
from ..data import NUM_CANDIDATES, Sample, SequenceDataset, pad_histories
from ..metrics import mean_std, ranking_metrics
from . import RECOMMENDERS, SequentialRecommender, build_recommender


@dataclass
class RecTrainConfig:
    """Hyper-parameters of one recommender run (saved beside the checkpoint)."""

    model: str = option("sasrec", "recommender architecture", choices=sorted(RECOMMENDERS))
    dim: int = option(64, "item embedding and hidden size (the paper's d_rec)")
    dropout: float = option(0.1, "dropout on embeddings and hidden layers")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(256, "training batch size")
    l2: float = option(1e-6, "L2 penalty (Adam weight decay); the paper searched 1e-4..1e-6")
    max_epochs: int = option(60, "upper bound on training epochs")
    patience: int = option(8, "stop after this many epochs without a better validation HR@1")
    seed: int = option(0, "seed for initialisation, shuffling and negatives")
    val_seeds: int = option(3, "validation HR@1 is averaged over this many candidate seeds (94 users are noisy)")


def candidate_scores(model: SequentialRecommender, samples: list[Sample], cands: list[tuple[int, ...]], batch_size: int = 1024) -> np.ndarray:
    """Scores ``(N, C)`` of each sample's candidates (computed on the model's device)."""
    model.eval()
    out = [model.score_histories([s.history for s in samples[start : start + batch_size]],
                                 cands[start : start + batch_size]).numpy() for start in range(0, len(samples), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, NUM_CANDIDATES))


def evaluate(model: SequentialRecommender, ds: SequenceDataset, split: str, seeds: list[int]) -> dict[str, object]:
    """HR@1 / HR@5 / NDCG@5 on ``split`` for each candidate seed, with mean and std over seeds."""
    samples = ds.split(split)
    per_seed = []
    for seed in seeds:
        cands = ds.candidates(split, seed=seed)  # the dataset's candidate stream
        target_pos = np.array([c.index(s.target) for c, s in zip(cands, samples)])
        per_seed.append(ranking_metrics(candidate_scores(model, samples, cands), target_pos))
    summary: dict[str, object] = {"split": split, "seeds": list(seeds), "per_seed": per_seed, "samples": len(samples)}
    for key in per_seed[0]:
        summary[key], summary[key + "_std"] = mean_std([m[key] for m in per_seed])
    return summary


def popularity_metrics(ds: SequenceDataset, split: str, seeds: list[int]) -> dict[str, float]:
    """The popularity baseline: candidates scored by how often they are a training target."""
    counts = np.zeros(ds.n_items)
    for s in ds.train:
        counts[s.target] += 1
    samples = ds.split(split)
    per_seed = []
    for seed in seeds:
        cands = ds.candidates(split, seed=seed)  # the dataset's candidate stream
        target_pos = np.array([c.index(s.target) for c, s in zip(cands, samples)])
        per_seed.append(ranking_metrics(counts[np.asarray(cands)], target_pos))
    return {key: mean_std([m[key] for m in per_seed])[0] for key in per_seed[0]}


def _negatives(rng: np.random.Generator, seqs: np.ndarray, targets: np.ndarray, n_items: int) -> np.ndarray:
    """One uniform negative per row, never the target nor an item of the row's history."""
    neg = rng.integers(n_items, size=len(targets))
    bad = (neg == targets) | (seqs == neg[:, None]).any(axis=1)
    while bad.any():
        neg[bad] = rng.integers(n_items, size=int(bad.sum()))
        bad = (neg == targets) | (seqs == neg[:, None]).any(axis=1)
    return neg


def train_recommender(cfg: RecTrainConfig, ds: SequenceDataset, progress: bool = True,
                      device: torch.device | str = "cpu") -> tuple[SequentialRecommender, dict]:
    """Train on ``ds.train`` on ``device``, keep the weights of the best validation HR@1, and return them with a log."""
    if not ds.train:
        raise ValueError(f"dataset {ds.name} has no training samples")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_recommender(cfg.model, n_items=ds.n_items, dim=cfg.dim, dropout=cfg.dropout).to(device)
    seqs, lens = pad_histories([s.history for s in ds.train], model.pad_id, model.max_len)
    targets = np.array([s.target for s in ds.train], dtype=np.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.l2)
    val_seeds = list(range(cfg.val_seeds))
    best: dict[str, Any] = {"hr@1": -1.0, "epoch": 0, "state": None}
    log: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"{cfg.model} seed {cfg.seed}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(targets))
        neg = _negatives(rng, seqs, targets, ds.n_items)
        total = 0.0
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            loss = model.calculate_loss(*(torch.as_tensor(x[idx], device=device) for x in (seqs, lens, targets, neg)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val = evaluate(model, ds, "val", val_seeds) if ds.val else {"hr@1": 0.0}
        log.append({"epoch": epoch, "loss": total / len(order), "val_hr@1": val["hr@1"]})
        bar.set_postfix(loss=f"{total / len(order):.4f}", val_hr1=f"{val['hr@1']:.3f}", best=f"{max(best['hr@1'], val['hr@1']):.3f}")
        if val["hr@1"] > best["hr@1"]:
            best = {"hr@1": val["hr@1"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()
    info = {"train_config": asdict(cfg), "best_epoch": best["epoch"], "best_val_hr@1": best["hr@1"],
            "epochs_run": len(log), "train_seconds": round(time.perf_counter() - start, 1), "log": log}
    return model, info
