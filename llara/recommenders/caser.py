"""Caser (Tang & Wang, 2018): horizontal and vertical convolutions over the ``L x d`` embedding matrix."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import SequentialRecommender


class Caser(SequentialRecommender):
    name = "caser"

    def __init__(self, n_items: int, dim: int = 64, max_len: int = 10, dropout: float = 0.1,
                 n_h: int = 16, heights: tuple[int, ...] = (2, 3, 4), n_v: int = 4) -> None:
        super().__init__(n_items, dim, max_len, dropout)
        if max(heights) > max_len:
            raise ValueError(f"filter heights {heights} exceed max_len {max_len}")
        self.n_h, self.heights, self.n_v = n_h, tuple(heights), n_v
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, dim)) for h in self.heights)
        self.vertical = nn.Conv2d(1, n_v, (max_len, 1))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n_h * len(self.heights) + n_v * dim, dim)

    def config(self) -> dict:
        return {**super().config(), "n_h": self.n_h, "heights": list(self.heights), "n_v": self.n_v}

    def encode(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        # Right-aligned: the vertical filter weights positions, so the most recent item must always sit at L-1.
        # Row b becomes [pad..., items]: new[p] = old[(p + len_b) mod L].
        steps = torch.arange(self.max_len, device=seqs.device)
        aligned = seqs.gather(1, (steps[None, :] + lens[:, None]) % self.max_len)
        keep = (aligned != self.pad_id).unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = (self.item_emb(aligned) * keep).unsqueeze(1)  # (B, 1, L, d); padded positions are exact zeros
        pooled = [F.relu(conv(x).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # each (B, n_h)
        vertical = self.vertical(x).flatten(1)  # (B, n_v * d)
        return F.relu(self.fc(self.drop(torch.cat(pooled + [vertical], dim=1))))
