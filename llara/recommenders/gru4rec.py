"""GRU4Rec (Hidasi et al., 2016): a GRU over the item sequence."""
from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender, gather_last


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"

    def __init__(self, n_items: int, dim: int = 64, max_len: int = 10, dropout: float = 0.1, layers: int = 1) -> None:
        super().__init__(n_items, dim, max_len, dropout)
        self.layers = layers
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def config(self) -> dict:
        return {**super().config(), "layers": self.layers}

    def encode(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.emb_dropout(self.item_emb(seqs)))  # (B, L, d); causal, so padding after lens is harmless
        return self.out(gather_last(hidden, lens))
