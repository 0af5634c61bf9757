"""The fixed item vectors the next-item head scores against: behaviour, language, or both.

``score(h, i) = (W_q h) . (W_k f_i)`` (``llara.model.next_item``) compares the LLM's state with each item's features
``f_i``. What ``f_i`` holds decides what the LLM can win by reading:

- ``recommender``: the recommender's item table ``(N, 64)``. Keys start as the recommender's own item vectors, so
  the cheapest solution is to reproduce the recommender's user vector (the "relay" a user token makes trivial);
- ``titles``: the mean input embedding of each title's tokens ``(N, D)``: the LLM's own words, no recommender;
- ``minilm``: the packaged all-MiniLM-L6-v2 vector of "title (year). genres" ``(N, 384)``, computed once per catalog
  and cached with the description search (``llara.data.search.catalog_vectors``): what a sentence encoder knows of the
  item, no behaviour;
- ``recommender+minilm``: both side by side ``(N, 64 + 384)``: keys start as the recommender's vectors in their
  first 64 dimensions and learn a language part beside them, so an answer can be right for reasons the recommender
  cannot see (cold items, the meaning of titles).
"""
from __future__ import annotations

import torch

from .next_item import title_features

ITEM_FEATURES = ("recommender", "titles", "minilm", "recommender+minilm")
LANGUAGE_FEATURES = ("titles", "minilm")  # need no recommender: what a text-only model may use


def minilm_features(catalog) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 vectors of every item's text ``(N, 384)`` float32 (cached; see ``llara.data.search``)."""
    from ..data.search import catalog_vectors

    matrix, _ = catalog_vectors(catalog)
    return torch.from_numpy(matrix.copy()).float()


def resolve_item_features(kind: str, text_items: bool = False) -> str:
    """The feature kind a config asks for: ``auto`` is ``titles`` for a ``--text-items`` run (how older configs
    spelled it), else ``recommender``."""
    if kind == "auto":
        return "titles" if text_items else "recommender"
    if kind not in ITEM_FEATURES:
        raise ValueError(f"unknown item features {kind!r}; valid: auto, {', '.join(ITEM_FEATURES)}")
    return kind


def build_item_features(kind: str, recommender, embedding: torch.Tensor | None, title_ids: list[list[int]], catalog
                        ) -> tuple[torch.Tensor, int]:
    """``(features (N, F), identity_dims)``: the head's fixed item vectors and how many leading dimensions are the
    recommender's (their keys start as the identity). ``embedding``: the LLM's input embedding matrix ``(V, D)``;
    ``title_ids[i]``: item ``i``'s title tokens (for ``titles``)."""
    if kind == "recommender":
        rec = recommender.item_embeddings().detach().float()
        return rec, rec.shape[1]
    if kind == "titles":
        if embedding is None:
            raise ValueError("title item features need the LLM's input embedding matrix")
        return title_features(embedding, title_ids), 0
    if kind == "minilm":
        return minilm_features(catalog), 0
    if kind == "recommender+minilm":
        rec = recommender.item_embeddings().detach().float()  # (N, 64)
        lang = minilm_features(catalog)  # (N, 384), unit norm
        # the language part on the recommender vectors' scale, so neither dominates the keys at the start
        lang = lang * rec.norm(dim=-1).mean()
        return torch.cat([rec, lang], dim=1), rec.shape[1]
    raise ValueError(f"unknown item features {kind!r}; valid: {', '.join(ITEM_FEATURES)}")
