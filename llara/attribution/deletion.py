"""Attribution by deletion (leave-one-out): what each watched item is worth to the model's answer, measured by
rebuilding the prompt without it and scoring it the way the model answers (``llara.attribution.methods`` holds the other
methods and the :class:`~llara.attribution.methods.Attribution` result this returns).

    python -m llara.explain --level deletion      # on the demo model, one drawn history
"""
from __future__ import annotations

import time

import torch

from ..model.llara_model import LLaRA, rank_candidates
from ..prompt.prompts import Prompt
from .methods import Attribution, attribution_result, check_target
from .prompt_layout import prompt_layout


@torch.inference_mode()
def explained_scores(model: LLaRA, prompts: list[Prompt], target: int) -> list[float]:
    """What the model ranks ``target`` by, for each prompt in its own precision: the log-softmax over the candidates
    of the next-item head for a model that has one, else the answer's log-likelihood (``LLaRA.rank``). With a head
    the prompts (cut after their query slot, a few dozen tokens each) run as one batch: one pass for all of them."""
    if model.next_head is None:
        return [dict(model.rank(p))[target] for p in prompts]
    scores = model.item_scores(prompts)  # (B, N)
    return [dict(rank_candidates(row, p.candidates))[target] for row, p in zip(scores, prompts)]


def explained_score(model: LLaRA, prompt: Prompt, target: int) -> float:
    """``explained_scores`` of one prompt."""
    return explained_scores(model, [prompt], target)[0]


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
        reduced = [model.builder.build([*prompt.history[:k], *prompt.history[k + 1:]], list(prompt.candidates),
                                       hybrid=prompt.hybrid, template=prompt.template, titles=prompt.titles)
                   for k in range(len(prompt.history))]
        full, *without = explained_scores(model, [prompt, *reduced], target)
        effects = [full - w for w in without]
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
    sequences = 1 + len(effects)
    passes = 1 if model.next_head is not None else sequences  # one batch, or one rank call per prompt
    return attribution_result(model, prompt, layout, "item", "deletion", target, source, full, raw, none, none,
                   {"forward_passes": cost["forward_passes"] + passes, "sequences": cost["sequences"] + sequences},
                   started, {"deleted": "title, slot and user slot rebuilt without the item",
                             "compute_dtype": str(model.llm.get_input_embeddings().weight.dtype).replace("torch.", "")},
                   totals=effects)
