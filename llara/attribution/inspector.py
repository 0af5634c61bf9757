"""The prompt inspector: what each embedding slot of a hybrid prompt carries, in terms that differ from slot to slot.

Every projected slot has the same norm by design and sits near the same generic vocabulary tokens, so neither
tells a person anything. Instead: the items the slot's recommender vector is closest to (what "similar" means to
the recommender), and how close the projected vector lands to its own title's token embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.llara_model import LLaRA
from ..prompt.prompts import Prompt


@dataclass
class SlotInfo:
    """One embedding slot of a hybrid prompt, for the prompt inspector."""

    position: int
    item: int
    title: str
    part: str  # "history" or "candidate"
    neighbours: list[tuple[int, float]]  # the items closest to it in the recommender's item space (cosine)
    title_cosine: float  # cosine between the projected vector and the mean input embedding of its title's tokens



@torch.no_grad()
def slot_infos(model: LLaRA, prompt: Prompt, unit_items: torch.Tensor, nearest: int = 3) -> list[SlotInfo]:
    """One ``SlotInfo`` per slot of ``prompt`` (none for a text-only prompt); ``unit_items`` ``(N, d_rec)``: the
    recommender's item vectors scaled to unit length."""
    if not prompt.slot_items:
        return []
    items = list(prompt.slot_items)
    titles = model.builder.titles
    vectors = model.projector(model.item_table[items]).float()  # (S, D)
    sims = unit_items[items] @ unit_items.T  # (S, N)
    rows, own = torch.arange(len(items), device=sims.device), torch.tensor(items, device=sims.device)
    sims[rows, own] = -2.0  # never its own neighbour
    top = sims.topk(nearest, dim=-1)
    embedding = model.llm.get_input_embeddings()
    n_hist = len(prompt.history)
    out = []
    for k, (pos, item) in enumerate(zip(prompt.slot_positions, items)):
        ids = model.builder.answer_ids(item)[:-1]  # " <title>" as the prompt writes it, cached per item
        title = embedding(torch.tensor(ids, device=embedding.weight.device)).float().mean(0)  # (D,)
        cosine = float(torch.nn.functional.cosine_similarity(vectors[k], title.to(vectors.device), dim=0))
        out.append(SlotInfo(pos, item, titles[item], "history" if k < n_hist else "candidate",
                            [(int(i), float(v)) for v, i in zip(top.values[k], top.indices[k])], cosine))
    return out
