"""Attribution by deletion (leave-one-out): what each watched item is worth to the model's answer, measured by
rebuilding the prompt without it and scoring it the way the model answers (``llara.attribution`` holds the other
methods and the :class:`~llara.attribution.Attribution` result this returns).

    python -m llara.explain --level deletion      # on the demo model, one drawn history
"""
from __future__ import annotations

import time

import torch

from .attribution import Attribution, attribution_result, check_target
from .model import LLaRA
from .prompt_layout import prompt_layout
from .prompts import Prompt


@torch.inference_mode()
def explained_score(model: LLaRA, prompt: Prompt, target: int) -> float:
    """What the model ranks ``target`` by, for one prompt in its own precision: the log-softmax over the candidates
    of the next-item head for a model that has one, else the answer's log-likelihood (``LLaRA.rank``)."""
    ranked = model.rank_items(prompt) if model.next_head is not None else model.rank(prompt)
    return dict(ranked)[target]


def attribute_deletion(model: LLaRA, prompt: Prompt, target: int | None = None) -> Attribution:
    """Item-level attribution by deletion (leave-one-out; see the module docstring): each watched item's score is
    ``explained_score(full prompt) - explained_score(prompt rebuilt without it)``. Token scores spread an item's
    score over its title tokens and its slot. Needs at least two watched items (removing the only one leaves no
    history to prompt with)."""
    started = time.perf_counter()
    if len(prompt.history) < 2:
        raise ValueError("deletion needs at least 2 watched items: without the only one there is no prompt to score")
    layout = prompt_layout(model, prompt)
    target, source, cost = check_target(model, prompt, target)
    was_training = model.training
    model.eval()
    try:
        full = explained_score(model, prompt, target)
        effects = []
        for k in range(len(prompt.history)):
            kept = [*prompt.history[:k], *prompt.history[k + 1:]]
            reduced = model.builder.build(kept, list(prompt.candidates), hybrid=prompt.hybrid, template=prompt.template,
                                          titles=prompt.titles)
            effects.append(full - explained_score(model, reduced, target))
    finally:
        model.train(was_training)
    raw = [0.0] * len(prompt.input_ids)
    for k, effect in enumerate(effects):
        for p in layout.history_titles[k]:
            raw[p] = effect
        slot = layout.history_slots[k]
        if slot is not None:  # every watched item of a hybrid prompt has one
            raw[slot] = effect
    none: list[float | None] = [None] * len(effects)
    calls = 1 + len(effects)
    return attribution_result(model, prompt, layout, "item", "deletion", target, source, full, raw, none, none,
                   {"forward_passes": cost["forward_passes"] + calls, "sequences": cost["sequences"] + calls},
                   started, {"deleted": "title, slot and user slot rebuilt without the item",
                             "compute_dtype": str(model.llm.get_input_embeddings().weight.dtype).replace("torch.", "")},
                   totals=effects)
