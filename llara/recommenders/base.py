"""The interface every sequential recommender implements (RecBole / SASRec.pytorch style).

Sequences are right-padded ``(B, L)`` item-index matrices with ``pad_id = n_items`` and ``(B,)`` lengths, the
original release's layout. ``encode`` gives the sequence state ``(B, d)``; scores are its dot product with item
embeddings. LLaRA projects ``item_embeddings()`` into the LLM's item slots, as the paper does; the optional user
token (``--user-token``) projects ``encode`` of the whole history into one more slot.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F


class SequentialRecommender(nn.Module):
    """Base class: owns the item embedding table and the shared scoring and loss."""

    name: ClassVar[str] = "base"

    def __init__(self, n_items: int, dim: int = 64, max_len: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        if n_items < 2:
            raise ValueError(f"n_items must be >= 2, got {n_items}")
        self.n_items, self.dim, self.max_len, self.dropout_p = n_items, dim, max_len, dropout
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # last row = padding, kept at zero
        nn.init.normal_(self.item_emb.weight[:n_items], std=dim**-0.5)

    @property
    def pad_id(self) -> int:
        return self.n_items

    def config(self) -> dict:
        """Everything needed to rebuild the module before loading its weights."""
        return {"model": self.name, "n_items": self.n_items, "dim": self.dim, "max_len": self.max_len, "dropout": self.dropout_p}

    def check_input(self, seqs: torch.Tensor, lens: torch.Tensor) -> None:
        """Clear errors for bad batches instead of an index error deep inside an embedding lookup."""
        if seqs.dim() != 2 or seqs.shape[1] != self.max_len:
            raise ValueError(f"seqs must have shape (batch, {self.max_len}), got {tuple(seqs.shape)}")
        if lens.shape != seqs.shape[:1]:
            raise ValueError(f"lens must have shape ({seqs.shape[0]},), got {tuple(lens.shape)}")
        if (lens < 1).any() or (lens > self.max_len).any():
            raise ValueError(f"every history needs 1..{self.max_len} items; got lengths {sorted(set(lens.tolist()))}")
        if (seqs < 0).any() or (seqs > self.n_items).any():
            raise ValueError(f"item ids must be in 0..{self.n_items - 1} (padding {self.n_items})")
        valid = torch.arange(self.max_len, device=seqs.device)[None, :] < lens[:, None]
        if (seqs[valid] == self.pad_id).any():
            raise ValueError("a padding id appears inside a history (histories are right-padded)")

    def encode(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Sequence state ``(B, d)`` after the last real item of each row."""
        raise NotImplementedError

    def forward(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.encode(seqs, lens)

    def score(self, seqs: torch.Tensor, lens: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, C)`` of candidate items ``(B, C)`` (higher = more likely next)."""
        self.check_input(seqs, lens)
        if (items < 0).any() or (items >= self.n_items).any():
            raise ValueError(f"candidate ids must be in 0..{self.n_items - 1}")
        state = self.encode(seqs, lens)  # (B, d)
        return torch.einsum("bd,bcd->bc", state, self.item_emb(items))

    @torch.inference_mode()
    def score_histories(self, histories, candidate_sets) -> torch.Tensor:
        """Scores ``(B, C)`` of each history's candidates, from item-id lists: the batch is built on this
        recommender's own device; the scores come back as float32 on the CPU."""
        from ..data import pad_histories

        seqs, lens = pad_histories([list(h) for h in histories], self.pad_id, self.max_len)  # (B, L), (B,)
        device = self.item_emb.weight.device
        items = torch.tensor([list(c) for c in candidate_sets], dtype=torch.long, device=device)  # (B, C)
        scores = self.score(torch.as_tensor(seqs, device=device), torch.as_tensor(lens, device=device), items)
        return scores.float().cpu()

    def full_scores(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, n_items)`` over the whole catalog."""
        self.check_input(seqs, lens)
        return self.encode(seqs, lens) @ self.item_embeddings().T

    def calculate_loss(self, seqs: torch.Tensor, lens: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """BCE on the positive next item and one sampled negative per row, as in the paper's recommenders."""
        state = self.encode(seqs, lens)  # (B, d)
        pos_logit = (state * self.item_emb(pos)).sum(-1)
        neg_logit = (state * self.item_emb(neg)).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit)
        )

    def item_embeddings(self) -> torch.Tensor:
        """The ``(n_items, d)`` table LLaRA projects into the LLM (padding row excluded)."""
        return self.item_emb.weight[: self.n_items]


def gather_last(hidden: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """``hidden[b, lens[b] - 1]`` for every row: ``(B, L, d) -> (B, d)``."""
    index = (lens - 1).clamp(min=0)[:, None, None].expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)
