"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence."""
from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender, gather_last


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        x = q + self.attn(q, x, x, attn_mask=causal, need_weights=False)[0]  # SASRec adds the residual to the normed query
        return x + self.ffn(self.ffn_norm(x))


class SASRec(SequentialRecommender):
    name = "sasrec"

    def __init__(self, n_items: int, dim: int = 64, max_len: int = 10, dropout: float = 0.1, blocks: int = 1, heads: int = 1) -> None:
        super().__init__(n_items, dim, max_len, dropout)
        self.blocks_n, self.heads = blocks, heads
        self.pos_emb = nn.Embedding(max_len, dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim)
        # True above the diagonal = may not attend: position t sees items 0..t only. With right padding a real
        # position never sees padding, and padded positions are discarded by gather_last.
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1), persistent=False)

    def config(self) -> dict:
        return {**super().config(), "blocks": self.blocks_n, "heads": self.heads}

    def encode(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = self.item_emb(seqs) * self.dim**0.5 + self.pos_emb.weight[None]  # (B, L, d)
        keep = (seqs != self.pad_id).unsqueeze(-1).to(x.dtype)
        x = self.emb_dropout(x) * keep
        for block in self.blocks:
            x = block(x, self.causal) * keep
        return gather_last(self.final_norm(x), lens)
