"""The written answer follows the ranking: a training loss that makes the title the LLM writes the item its
next-item head ranks first.

The next-item head reads the history well, but it never speaks; the paper's title loss teaches the LM head to
write a title, one target per prompt, and at this model size the written title is about chance. This loss ties the
two together. For every training prompt it computes the log-likelihood of each candidate's answer (what the
``rank`` decode scores, ``LLaRA.rank``), with gradients, and pulls their softmax towards the next-item head's
softmax over the same candidates:

    follow = KL( softmax(head scores over the C candidates) || softmax(answer log-likelihoods) )

The head is the teacher (detached): the words are meant to learn the ranking, the ranking is not pulled towards
the words, so that greedy generation writes the head's top-1. Measured on MovieLens (docs/results.md, "The LLM
names its pick"): it did not; the loss fell by making the candidates' answers equally likely.

With ``--answer index`` (llara/prompt/prompts.py) the student is the LM head's logits of the candidates' letters at the
answer position, read from the training pass itself (LlamaRec's one-pass index scoring): no continuation, every
candidate scored.

Two variants pull the letter and the head together from other sides: ``--mutual-weight`` adds the reverse KL
(the head pulled towards the answers' distribution, the answers detached: mutual learning of the two rankers), and
``--answer-target head`` trains the answer tokens on the head's own top-1 instead of the target
(``answer_on_head``). Measured in docs/results.md, "The LLM names its pick".

Cost (titles): the training pass already runs the full prompt with its target answer; its KV cache is reused, each row's
cache repeated once per scored candidate and masked to the prompt (the target's tokens after it are hidden), and
the ``B * top`` answers (about a dozen tokens each) run as one right-padded continuation batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..constants import IGNORE_INDEX
from ..prompt.batch import Batch
from ..prompt.prompts import Prompt
from .next_item import distillation_loss


def prompt_lengths(labels: torch.Tensor) -> list[int]:
    """Prompt length of each right-padded row ``(B, T)``: the position of its first answer label."""
    answer = labels != IGNORE_INDEX  # (B, T)
    if not bool(answer.any(1).all()):
        raise ValueError("a training row has no answer tokens: the follow loss needs prompts built with a target")
    return answer.int().argmax(1).tolist()  # the first True of each row


def answer_logprobs(model: Any, out: Any, batch: Batch, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Log-likelihood of each candidate's answer ``(B, C)``, differentiable, from a training pass ``out`` over the
    right-padded ``batch`` (prompt + target answer) that kept its cache (``use_cache=True``) and all logits.
    ``candidates`` ``(B, C)``: the items to score (default: each prompt's candidates); the pass's cache is consumed.

    Row ``b``'s cache holds ``T`` positions: its prompt (``L_b`` tokens), its target answer and padding. Each
    continuation sees only the first ``L_b`` (attention mask) and sits at positions ``L_b, L_b + 1, ...``, exactly
    where the answer follows the prompt at inference; the first answer token is scored by the pass's own logits at
    position ``L_b - 1``.
    """
    candidates = batch.candidates if candidates is None else candidates
    if candidates is None or batch.labels is None:
        raise ValueError("the follow loss needs training batches with equal-size candidate sets and targets")
    device = out.logits.device
    B, C = candidates.shape
    T = batch.input_ids.shape[1]
    lengths = prompt_lengths(batch.labels)
    answers = [[model.builder.answer_ids(int(c)) for c in row] for row in candidates.tolist()]
    # the continuation's inputs are each answer but its last token (which is only predicted): (B*C, W)
    width = max(len(a) for row in answers for a in row) - 1
    pad = model.pad_id
    full = torch.tensor([a + [pad] * (width + 1 - len(a)) for row in answers for a in row], device=device)
    real = torch.tensor([[1] * len(a) + [0] * (width + 1 - len(a)) for row in answers for a in row], device=device,
                        dtype=torch.bool)  # (B*C, W + 1)
    cont = full[:, :width]
    # first answer token: scored by the prompt pass at its last prompt position
    last = out.logits[torch.arange(B, device=device), torch.tensor(lengths, device=device) - 1].float()  # (B, V)
    first = last.log_softmax(-1).gather(1, full[:, 0].view(B, C))  # (B, C)
    past = out.cache
    past.batch_repeat_interleave(C)  # (B*C, heads, T, d): row b's cache C times, in row-major order
    prompt_mask = (torch.arange(T, device=device)[None] < torch.tensor(lengths, device=device)[:, None]).long()  # (B, T)
    mask = torch.cat([prompt_mask.repeat_interleave(C, 0), torch.ones((B * C, width), dtype=torch.long, device=device)], 1)
    positions = torch.tensor(lengths, device=device).repeat_interleave(C)[:, None] + torch.arange(width, device=device)
    logits = model.llm(input_ids=cont, attention_mask=mask, position_ids=positions, cache=past, use_cache=True).logits
    # logits[:, j] predicts answer token j + 1; log p = logit - logsumexp, without a (B*C, W, V) log_softmax copy
    logits = logits.float()
    later = logits.gather(-1, full[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)  # (B*C, W)
    later = (later * real[:, 1:]).sum(-1).view(B, C)
    return first + later


def letter_logits(model: Any, out: Any, batch: Batch) -> torch.Tensor:
    """The LM head's logits ``(B, C)`` of each candidate's letter (`` A``, `` B``, ...) at the answer position of an
    indexed prompt: the last prompt position of each right-padded row, from the training pass ``out``."""
    if batch.candidates is None or batch.labels is None:
        raise ValueError("the follow loss needs training batches with equal-size candidate sets and targets")
    B, C = batch.candidates.shape
    device = out.logits.device
    last = torch.tensor(prompt_lengths(batch.labels), device=device) - 1  # (B,)
    letters = torch.tensor(model.builder.index_ids[:C], device=device)  # (C,)
    return out.logits[torch.arange(B, device=device)[:, None], last[:, None], letters[None]].float()  # (B, C)


def head_and_answers(model: Any, out: Any, batch: Batch, top: int = 0,
                     detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher and the student of the follow loss, ``(B, K)`` each: the next-item head's scores
    (``out.item_logits`` ``(B, N)``, detached unless ``detach=False``) of each prompt's candidates and their answers'
    log-likelihoods (or, for indexed prompts, their letters' logits, ``K = C``).

    ``top > 0`` keeps only the head's ``top`` best candidates per prompt: the answers that decide what greedy decoding
    writes, at ``top / C`` of the continuation cost. The target's answer is trained by the title loss either way."""
    cands = batch.candidates
    if cands is None:
        raise ValueError("the follow loss needs equal-size candidate sets")
    head = out.item_logits.detach() if detach else out.item_logits
    teacher = head.gather(1, cands.to(head.device))  # (B, C)
    if model.builder.indexed:  # every letter is scored by the pass itself: no reason to keep fewer
        return teacher, letter_logits(model, out, batch)
    if 0 < top < cands.shape[1]:
        keep = teacher.topk(top, dim=1).indices  # (B, K)
        teacher, cands = teacher.gather(1, keep), cands.gather(1, keep.to(cands.device))
    return teacher, answer_logprobs(model, out, batch, cands)


def follow_loss(model: Any, out: Any, batch: Batch, top: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(head / temperature) || softmax(answer log-likelihoods))`` over each prompt's (top) candidates,
    averaged: ``()``. A temperature below 1 sharpens the teacher towards the head's top-1, which is what greedy
    decoding should write; 1 copies the head's whole distribution."""
    return follow_terms(model, out, batch, top, temperature)[0]


def follow_terms(model: Any, out: Any, batch: Batch, top: int = 0,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(follow, mutual)``, each ``()``: the follow loss (the words pulled towards the detached head) and its
    reverse, ``KL(softmax(answers) || softmax(head))`` with the answers detached (the head pulled towards what the
    words pick). Trained together they are mutual learning: two rankers of the same prompt, each the other's teacher,
    meet from both sides instead of the words chasing a head that never moves towards them."""
    if not temperature > 0:
        raise ValueError(f"the follow temperature must be > 0, got {temperature}")
    head, words = head_and_answers(model, out, batch, top, detach=False)
    return distillation_loss(words, head.detach() / temperature), distillation_loss(head, words.detach())


def answer_on_head(model: Any, prompts: list[Prompt]) -> list[Prompt]:
    """The training prompts with their answer tokens naming the next-item head's top-1 among each prompt's candidates
    instead of its target (``--answer-target head``). ``target`` is kept, so the next-item losses still learn the true
    next item; only what the title loss teaches the LM to write changes. When the head is right the prompt is
    unchanged; when it is wrong the LM learns to write the head's (wrong) pick, which is what greedy generation
    should do if the written answer is to be the ranking's first item.

    The head reads the query slot, which sits before the candidates and the answer, so the no-grad pass over the
    prompts cut there (``LLaRA.item_scores``, in eval mode: no LoRA dropout) gives the pick the ``next`` decode
    makes."""
    was_training = model.training
    model.eval()
    try:
        scores = model.item_scores(prompts)  # (B, N)
    finally:
        model.train(was_training)
    relabelled = []
    for p, row in zip(prompts, scores):
        pick = p.candidates[int(row[list(p.candidates)].argmax())]
        relabelled.append(dataclasses.replace(p, target_ids=tuple(model.builder.answer_for(p, pick))))
    return relabelled


def written_agrees(chosen: list, ranked_first: list) -> float:
    """Share of samples whose written answer (an item id, or None when invalid) is the ranking's top-1."""
    if len(chosen) != len(ranked_first) or not chosen:
        raise ValueError("need the same, non-zero number of written answers and rankings")
    return sum(int(a is not None and a == b) for a, b in zip(chosen, ranked_first)) / len(chosen)


@torch.no_grad()
def follow_check(model: Any, prompts: list, top: int = 8, batch_size: int = 4) -> dict[str, float]:
    """Did the words learn the ranking, or only to make the head's ``top`` answers equally likely? On training
    prompts (with targets): the head's entropy over its top candidates, the KL a uniform student would have, and the
    model's own KL (the follow loss without its weight). A model whose KL is near the uniform one has learned no order."""
    import math

    from ..prompt.batch import collate

    ent, uniform, own, scored = [], [], [], 0
    for start in range(0, len(prompts), batch_size):
        batch = collate(prompts[start : start + batch_size], model.pad_id, with_targets=True, padding_side="right",
                        device=model.device)
        out = model.llm(inputs_embeds=model.embed(batch), attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, labels=batch.labels, use_cache=True, output_hidden_states=True)
        rows = torch.arange(batch.input_ids.shape[0], device=model.device)
        out.item_logits = model.next_head(out.hidden_states[-1][rows, batch.query_cols])  # (B, N), as forward reads it
        teacher, student = head_and_answers(model, out, batch, top)
        scored = teacher.shape[1]  # the candidates the loss compares (all of them for indexed answers)
        log_t, log_s = teacher.float().log_softmax(-1), student.log_softmax(-1)
        p = log_t.exp()
        ent += (-(p * log_t).sum(-1)).tolist()
        uniform += (p * (log_t + math.log(teacher.shape[1]))).sum(-1).tolist()
        own += (p * (log_t - log_s)).sum(-1).tolist()
    n = len(ent)
    return {"prompts": n, "top": scored, "teacher_entropy": sum(ent) / n, "kl_uniform": sum(uniform) / n,
            "kl_model": sum(own) / n}
