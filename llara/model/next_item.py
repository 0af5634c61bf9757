"""Next-item scoring from the LLM's hidden states: the levers that make LLaRA read the watch history.

The paper's LLaRA learns only from the answer's title tokens, one signal per prompt, and its candidates are scored
each on their own. Here a hidden state is compared with every item, as a sequential recommender does:

    score(h, i) = (W_q h) . (W_k f_i)          h: (D,) hidden state, f_i: (F,) fixed features of item i

- ``NextItemHead`` holds ``W_q`` (D -> d_key), ``W_k`` (F -> d_key) and the fixed item features: the recommender's
  item table for a hybrid model (``W_k`` starts as the identity, so keys start as the recommender's own item
  vectors), or the mean input embedding of each title's tokens for a text-only model (no recommender involved).
- **Dense supervision**: the hidden state at every history slot predicts the next watched item over the whole
  catalog (the last slot predicts the target), so one prompt teaches up to 10 next-item steps, as SASRec trains.
- **User token**: the recommender's sequence state of the history, projected into one slot after the history.
- **Distillation**: KL from the recommender's softmax over the prompt's candidates to the head's.
- **Residual scoring**: ``recommender score + gate * head score``; the gate starts at 0, so an untrained model ranks
  exactly as the recommender, and it is learned jointly.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..constants import IGNORE_INDEX


class NextItemHead(nn.Module):
    """Scores hidden states ``(..., D)`` against all ``N`` items: ``(..., N)``."""

    features: torch.Tensor  # a registered buffer

    def __init__(self, features: torch.Tensor, d_model: int, d_key: int = 64, residual: bool = False,
                 identity_dims: int | None = None) -> None:
        """``identity_dims``: the leading feature dimensions whose keys start as the features themselves (the
        recommender's part; default: all of them when ``F == d_key``); the keys of the remaining features start
        random and apart from them (zero cross blocks), so a language part is learned beside the recommender's."""
        super().__init__()
        if features.dim() != 2:
            raise ValueError(f"item features must be (n_items, F), got {tuple(features.shape)}")
        n_items, d_feat = features.shape
        self.register_buffer("features", features.detach().float().clone(), persistent=False)  # (N, F), frozen
        self.query = nn.Linear(d_model, d_key, bias=False)
        nn.init.zeros_(self.query.weight)  # starts neutral: every item scores 0 until training moves it
        self.key = nn.Linear(d_feat, d_key, bias=False)
        k = (d_feat if d_feat == d_key else 0) if identity_dims is None else identity_dims
        if not 0 <= k <= min(d_feat, d_key):
            raise ValueError(f"identity_dims={k} does not fit features of {d_feat} dims and keys of {d_key}")
        if k:
            with torch.no_grad():
                self.key.weight[:k].zero_()
                self.key.weight[:, :k].zero_()
                self.key.weight[:k, :k].copy_(torch.eye(k))  # keys start as the (recommender) features themselves
        # gate of the LLM correction in residual scoring; 0 at init, so the sum is the recommender's score
        self.gate = nn.Parameter(torch.zeros(())) if residual else None

    @property
    def n_items(self) -> int:
        return self.features.shape[0]

    def keys(self) -> torch.Tensor:
        return self.key(self.features)  # (N, d_key)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        q = self.query(hidden.float())  # (..., d_key)
        return q @ self.keys().T  # (..., N)

    def residual(self, llm_scores: torch.Tensor, rec_scores: torch.Tensor) -> torch.Tensor:
        """``rec + gate * llm`` for scores of the same items ``(..., N)`` or ``(..., C)``."""
        if self.gate is None:
            raise ValueError("this model was trained without residual scoring (--residual)")
        return rec_scores.float() + self.gate * llm_scores.float()


def title_features(embedding: torch.Tensor, answer_ids: list[list[int]]) -> torch.Tensor:
    """Mean input embedding ``(N, D)`` of each item's title tokens: item features that need no recommender.

    ``embedding`` is the LLM's input embedding matrix ``(V, D)``; ``answer_ids[i]`` the title's token ids (a
    trailing terminator token, if any, is the caller's to drop)."""
    rows = []
    with torch.no_grad():
        for ids in answer_ids:
            if not ids:
                raise ValueError("an item has an empty title: no tokens to build its features from")
            rows.append(embedding[torch.tensor(ids, device=embedding.device)].float().mean(0))
    return torch.stack(rows)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` over the last dim, averaged over rows: ``(B, C) -> ()``."""
    log_t = F.log_softmax(teacher.float(), dim=-1)
    log_s = F.log_softmax(student.float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def next_item_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``(H, N)`` logits vs ``(H,)`` item ids over the whole catalog; IGNORE_INDEX rows skipped."""
    if (targets != IGNORE_INDEX).sum() == 0:
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
