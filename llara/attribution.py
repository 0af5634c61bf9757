"""Why did LLaRA pick (or not pick) a candidate? Attributions of the candidate's answer log-likelihood.

Two views, both measured on ``log p(" <title>\\n" | prompt)`` of one target candidate (the model's top-ranked
candidate by default, or any candidate the user names):

- **item level** (:func:`attribute_items`, the default view): feature ablation. Every history item is split into
  its title tokens and, in a hybrid prompt, its embedding slot; the score of a part is
  ``logL(full prompt) - logL(prompt with that part ablated)``, so a positive score means the part made the target
  more likely. A title is ablated by *attention-masking* its tokens and renumbering the positions after them:
  for a causal LM that is exactly the prompt with the title deleted, with every tensor keeping its length, so all
  variants run as one batch. A slot is ablated by splicing a neutral vector (see :func:`neutral_slot_vector`)
  instead of the item's projected embedding. The answer tokens are appended to every variant and scored in the
  same pass: one batched forward for ``1 + n_history * (2 if hybrid else 1)`` sequences.
- **token level** (:func:`attribute_tokens`): integrated gradients (or gradient x input) with captum on the
  *post-splice* ``inputs_embeds``, so an embedding slot is scored like any token. The leaf tensor is float32 and is
  cast to the compute dtype inside the forward, so nf4 (bitsandbytes, bf16 compute) models give float32 gradients
  too; a peft-wrapped LLM works unchanged since only ``inputs_embeds`` is differentiated.

Both compute in float32 by default: a bf16 model is upcast for the call and cast back exactly (see
:func:`_attributing` for why: bf16 rounding is as large as the effects being measured).

A model with a next-item head (``--next-weight``) ranks candidates by that head, not by title likelihood: for it
both views measure the target's log-softmax over the candidates of the head at the query position instead. Its user
slot (the recommender's encoding of the whole history) is left in place when one item is ablated.

Results are :class:`Attribution` objects a UI renders directly (``to_dict()``, ``highlighted()``).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch

from .constants import CANDIDATE_TOKEN, HISTORY_TOKEN, PLACEHOLDER_TOKEN
from .data import NUM_CANDIDATES, candidates_around
from .llm import unpack_4bit_for_training
from .model import LLaRA, collate
from .prompts import SEPARATOR, Prompt

SLOT_BASELINES = ("mean", "placeholder")
TOKEN_METHODS = ("ig", "grad_x_input")


@dataclass
class TokenScore:
    text: str  # the token as decoded on its own (slots show as <HistoryEmb> / <CansEmb>)
    score: float  # raw / max |raw| over the prompt: in [-1, 1], what gr.HighlightedText expects
    raw: float  # log-likelihood units (item level: the score of the group the token belongs to)
    part: str  # "history title", "history slot", "candidate title", "candidate slot" or "prompt"
    item: int | None = None  # the item the token belongs to, if any


@dataclass
class ItemScore:
    item: int
    title: str
    title_score: float
    embedding_score: float | None  # None for a text-only prompt (it has no embedding slots)
    total: float  # title + embedding: the sum of the two separate effects (interactions are not measured)


@dataclass
class Attribution:
    level: str  # "item" or "token"
    method: str  # "ablation", "ig" or "grad_x_input"
    hybrid: bool
    target: int
    target_title: str
    target_source: str  # "model" (its top-ranked candidate) or "user" (named)
    log_likelihood: float  # logL of the target's answer given the full prompt
    tokens: list[TokenScore]
    items: list[ItemScore]
    cost: dict = field(default_factory=dict)  # forward_passes (model calls), sequences (rows run), seconds
    details: dict = field(default_factory=dict)  # method-specific extras (baselines, IG convergence delta)

    def to_dict(self) -> dict:
        return asdict(self)

    def highlighted(self) -> list[tuple[str, float]]:
        """``(text, score)`` pairs for ``gr.HighlightedText``."""
        return [(t.text, t.score) for t in self.tokens]


@dataclass(frozen=True)
class Ablation:
    """One ablated variant: prompt positions deleted (masked) and slot positions given the neutral vector."""

    hide: tuple[int, ...] = ()
    neutral_slots: tuple[int, ...] = ()


# ---- prompts from titles ---------------------------------------------------------------------------------------

def _resolve(catalog, value: str | int, what: str) -> int:
    if isinstance(value, str):
        try:
            return catalog.find(value)
        except KeyError as err:
            raise ValueError(f"{what}: {err.args[0]}") from None
    catalog.check_ids([value], what)
    return int(value)


def build_prompt(model: LLaRA, history: list, candidates: list | None = None, candidate: str | int | None = None,
                 hybrid: bool = True, seed: int = 0, k: int = NUM_CANDIDATES, template: int = 0) -> tuple[Prompt, int | None]:
    """A prompt from titles (or item ids); returns it with the named candidate's id (``None`` when not named).

    Without ``candidates``, ``k`` are drawn with ``llara.data.candidates_around`` (seeded by ``seed``) around the
    named candidate, or around a random unseen item when none is named."""
    catalog = model.builder.catalog
    if not history:
        raise ValueError("the history is empty: name at least one watched item")
    hist = [_resolve(catalog, h, f"history item {i + 1}") for i, h in enumerate(history)]
    target = None if candidate is None else _resolve(catalog, candidate, "candidate")
    if target is not None and target in hist:
        raise ValueError(f"candidate {catalog.titles[target]!r} is in the history; candidates must be unseen items")
    if candidates:
        cands = [_resolve(catalog, c, f"candidate {i + 1}") for i, c in enumerate(candidates)]
        if target is not None and target not in cands:
            raise ValueError(f"candidate {catalog.titles[target]!r} is not among the {len(cands)} candidates given")
        seen = sorted(set(cands) & set(hist))
        if seen:
            raise ValueError(f"{catalog.titles[seen[0]]!r} is both in the history and among the candidates")
    else:
        cands = list(candidates_around(hist, catalog, seed, include=target, k=k))
    return model.builder.build(hist, cands, hybrid=hybrid, template=template), target


# ---- where each item sits in the prompt --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Token positions of every item's title and slot in a prompt, and a part/item label per position."""

    history_titles: list[list[int]]
    history_slots: list[int | None]  # None in a text-only prompt
    parts: list[str]
    items: list[int | None]


def prompt_layout(model: LLaRA, prompt: Prompt) -> Layout:
    """Title spans are found in character space (the prompt text is rebuilt from its items exactly as the builder
    writes it) and mapped to tokens with the fast tokenizer's offsets: no assumption about how titles tokenize."""
    b, tok = model.builder, model.builder.tokenizer
    enc = tok(prompt.text, add_special_tokens=True, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(prompt.input_ids):
        raise ValueError("the prompt's token ids differ from its text's: was it built with another tokenizer?")
    offsets, placeholders = enc["offset_mapping"], {b.history_id, b.candidate_id, b.placeholder_id}
    parts: list[str] = ["prompt"] * len(prompt.input_ids)
    items: list[int | None] = [None] * len(prompt.input_ids)
    titles: list[list[list[int]]] = []
    cursor = 0
    for role, group, slot_tok in (("history", prompt.history, HISTORY_TOKEN), ("candidate", prompt.candidates, CANDIDATE_TOKEN)):
        slot_tok = slot_tok if prompt.hybrid else PLACEHOLDER_TOKEN
        listing = SEPARATOR.join(f"{b.titles[i]} {slot_tok}" for i in group)
        cursor = prompt.text.find(listing, cursor)
        if cursor < 0:
            raise ValueError(f"cannot find the {role} list in the prompt text")
        spans = []
        for item in group:
            start, end = cursor, cursor + len(b.titles[item])
            cursor = end + 1 + len(slot_tok) + len(SEPARATOR)
            pos = [p for p, (s, e) in enumerate(offsets)
                   if e > s and s < end and e > start and prompt.input_ids[p] not in placeholders]
            if not pos:
                raise ValueError(f"no tokens found for the title of item {item}")
            for p in pos:
                parts[p], items[p] = f"{role} title", item
            spans.append(pos)
        titles.append(spans)
    slots: list[int | None] = [None] * len(prompt.history)
    for k, (p, item) in enumerate(zip(prompt.slot_positions, prompt.slot_items)):  # hybrid only: history, then candidates
        role = "history" if k < len(prompt.history) else "candidate"
        parts[p], items[p] = f"{role} slot", item
        if role == "history":
            slots[k] = p
    return Layout(titles[0], slots, parts, items)


# ---- scoring -----------------------------------------------------------------------------------------------------

def _check_target(model: LLaRA, prompt: Prompt, target: int | None) -> tuple[int, str, dict]:
    """The target and where it came from; ranking for the model's choice costs two calls (prefill + answers)."""
    if not prompt.history:
        raise ValueError("the prompt's history is empty: there is nothing to attribute")
    if target is None:  # the model's choice as it ranks in its own precision (what the user is shown elsewhere)
        was_training = model.training
        try:
            model.eval()
            best = (model.rank_items(prompt) if model.next_head is not None else model.rank(prompt))[0][0]
        finally:
            model.train(was_training)
        return best, "model", {"forward_passes": 2, "sequences": 1 + len(prompt.candidates)}
    if target not in prompt.candidates:
        name = model.builder.titles[target] if 0 <= target < len(model.builder.titles) else "unknown item"
        raise ValueError(f"candidate {target} ({name!r}) is not among the prompt's {len(prompt.candidates)} candidates")
    return int(target), "user", {"forward_passes": 0, "sequences": 0}


@torch.no_grad()
def neutral_slot_vector(model: LLaRA, baseline: str = "mean") -> torch.Tensor:
    """The vector that stands for "no item" in a slot, ``(D,)`` float32.

    ``mean``: the mean projected vector over the catalog (an average item), rescaled to the mean norm of the
    projected vectors, since averaging shrinks it and a short vector is itself unusual input. ``placeholder``: the
    ``<PH>`` embedding, i.e. the slot as the text-only prompt fills it (read through the embedding module, which
    may scale rows: Gemma)."""
    if baseline == "mean":
        vectors = model.projector(model.item_table).float()  # (N, d_rec) -> (N, D)
        mean = vectors.mean(0)
        return mean * (vectors.norm(dim=-1).mean() / mean.norm().clamp_min(1e-12))
    if baseline == "placeholder":
        embedding = model.llm.get_input_embeddings()
        return embedding(torch.tensor([model.builder.placeholder_id], device=embedding.weight.device))[0].float()
    raise ValueError(f"unknown slot baseline {baseline!r}; valid: {', '.join(SLOT_BASELINES)}")


def _answer_logl(model: LLaRA, embeds: torch.Tensor, mask: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """``(B,)`` log-likelihood of ``answer`` ``(m,)``, the last ``m`` positions of ``embeds`` ``(B, T, D)``.

    Positions are counted over unmasked tokens, so a masked span is deleted rather than left as a gap. Only the
    ``m`` logits that predict the answer are computed (the full ``(B, T, V)`` tensor would be hundreds of MB for a
    49k vocabulary), selected by an index tensor rather than ``logits_to_keep=int``: the int form slices the hidden
    states into a non-contiguous view, and with frozen weights torch then multiplies by the output matrix as a
    batched matmul that copies it once per row (measured: a 21-row pass on SmolLM2 took 13 s instead of 4.5 s).
    """
    m, length = answer.shape[0], embeds.shape[1]
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
    keep = torch.arange(length - m - 1, length - 1, device=embeds.device)  # (m,): position T-m-1+j predicts token j
    out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False)
    logp = out.logits.float().log_softmax(-1)  # (B, m, V)
    return logp.gather(-1, answer.to(logp.device)[None, :, None].expand(logp.shape[0], m, 1)).squeeze(-1).sum(-1)


def _target_score(model: LLaRA, prompt: Prompt, embeds: torch.Tensor, mask: torch.Tensor, answer: torch.Tensor,
                  target: int) -> torch.Tensor:
    """``(B,)`` what the model ranks the target by: with a next-item head, the target's log-softmax over the
    candidates of that head at the query position (all positions after it are irrelevant and not run); otherwise
    the answer's log-likelihood."""
    if model.next_head is None:
        return _answer_logl(model, embeds, mask, answer)
    q = prompt.query_position
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, : q + 1]  # (B, q + 1)
    out = model.llm(inputs_embeds=embeds[:, : q + 1], attention_mask=mask[:, : q + 1], position_ids=positions,
                    logits_to_keep=1, output_hidden_states=True, use_cache=False)
    logits = model.next_head(out.hidden_states[-1][:, q])[:, list(prompt.candidates)]  # (B, C)
    return logits.log_softmax(-1)[:, prompt.candidates.index(target)]


@torch.no_grad()
def _spliced(model: LLaRA, prompt: Prompt, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs_embeds`` ``(1, L + m, D)`` of prompt + answer (slots spliced) and the answer ids ``(m,)``."""
    answer = model.builder.answer_ids(target)
    batch = collate([replace(prompt, target=target, target_ids=tuple(answer))], model.pad_id, with_targets=True,
                    padding_side="right")
    return model.embed(batch), torch.tensor(answer)


@torch.no_grad()
def ablation_log_likelihoods(model: LLaRA, prompt: Prompt, target: int, ablations: list[Ablation],
                             slot_baseline: str = "mean", batch_size: int = 32) -> tuple[float, list[float], int]:
    """``(logL of the full prompt, logL of each ablated variant, model calls)``; variants run ``batch_size`` at a time."""
    embeds, answer = _spliced(model, prompt, target)  # (1, T, D)
    slots = set(prompt.slot_positions)
    neutral = neutral_slot_vector(model, slot_baseline).to(embeds.dtype) if any(a.neutral_slots for a in ablations) else None
    variants = [Ablation(), *ablations]  # row 0 is the full prompt
    scores: list[float] = []
    calls = 0
    for start in range(0, len(variants), batch_size):
        chunk = variants[start : start + batch_size]
        x = embeds.expand(len(chunk), -1, -1).clone()  # (B, T, D)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)  # (B, T)
        for row, ab in enumerate(chunk):
            if any(p < 1 or p >= len(prompt.input_ids) for p in ab.hide):
                raise ValueError("ablations may hide prompt positions 1..L-1 only (not the first token or the answer)")
            if not set(ab.neutral_slots) <= slots:
                raise ValueError(f"positions {sorted(set(ab.neutral_slots) - slots)} are not embedding slots")
            mask[row, list(ab.hide)] = 0
            if ab.neutral_slots:
                x[row, list(ab.neutral_slots)] = neutral
        scores += _target_score(model, prompt, x, mask, answer, target).tolist()
        calls += 1
    return scores[0], scores[1:], calls


def _result(model: LLaRA, prompt: Prompt, layout: Layout, level: str, method: str, target: int, source: str,
            full: float, raw: list[float], titles: list[float], slots: list, cost: dict, started: float,
            details: dict) -> Attribution:
    """Package per-token raw scores (normalised by the largest |raw|) and per-item title/slot scores."""
    top = max((abs(r) for r in raw), default=0.0)
    texts = [model.tokenizer.decode([t]) for t in prompt.input_ids]
    tokens = [TokenScore(text, (r / top) if top > 0 else 0.0, r, part, item)
              for text, r, part, item in zip(texts, raw, layout.parts, layout.items)]
    items = [ItemScore(item, model.builder.titles[item], t, s, t + (s or 0.0))
             for item, t, s in zip(prompt.history, titles, slots)]
    cost = {**cost, "seconds": time.perf_counter() - started}
    return Attribution(level, method, prompt.hybrid, target, model.builder.titles[target], source, full, tokens, items,
                       cost, details)


@contextmanager
def _attributing(model: LLaRA, upcast: bool):
    """Eval mode (LoRA dropout off: attributions must be deterministic), float32 compute, differentiable 4-bit layers.

    ``upcast``: a bf16 forward of SmolLM2 moves an answer's log-likelihood by ~0.1-0.3 nats with the batch layout
    alone (measured; autocast does not help), as much as a typical item's effect, so attributions are computed with
    every dense parameter and buffer upcast to float32 and each cast back to its own dtype afterwards (exact: bf16
    values are float32 values). 4-bit models keep their bf16 compute and that noise. Not thread-safe: serve
    attributions and other uses of the same model one at a time (a lock, or a Gradio concurrency limit of 1).
    bitsandbytes: on a CPU with AVX512-BF16 a ``Linear4bit`` in eval mode repacks its weight on its first no-grad
    forward and from then on runs ``gemv_4bit``, which has no autograd: gradients through it come back silently
    zero. Such weights are unpacked and the layers marked as training (the repacking only happens in eval mode;
    nothing else in their forward reads the flag) until the block ends."""
    was_training = model.training
    model.eval()
    # bitsandbytes' repacking after an unpack does not reproduce the original packed weights (measured: a served
    # nf4 model answered differently after one attribution), so the exact packed form is put back afterwards
    packed = [(m, m.weight.data, copy.deepcopy(m.weight.quant_state)) for m in model.llm.modules()
              if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
    layers = unpack_4bit_for_training(model.llm)
    for m in layers:
        m.training = True
    tensors = [] if layers or not upcast else [t for t in [*model.llm.parameters(), *model.llm.buffers()]
                                               if t.dtype in (torch.bfloat16, torch.float16)]
    dtypes = [t.dtype for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.float()  # .data keeps the Parameter objects (and tied weights) as they are
        yield
    finally:
        for t, dtype in zip(tensors, dtypes):
            t.data = t.data.to(dtype)
        for m, data, state in packed:
            m.weight.data, m.weight.quant_state = data, state
        model.train(was_training)


def attribute_items(model: LLaRA, prompt: Prompt, target: int | None = None, slot_baseline: str = "mean",
                    batch_size: int = 32, upcast: bool = True) -> Attribution:
    """Item-level attribution by ablation (see the module docstring). Token scores spread each part's score
    over its tokens, so the same prompt rendering serves both views. ``upcast=False`` keeps a bf16 model's own
    precision: about twice as fast on this CPU, but small scores are then mostly rounding noise."""
    started = time.perf_counter()
    layout = prompt_layout(model, prompt)
    target, source, cost = _check_target(model, prompt, target)
    ablations = []
    for k in range(len(prompt.history)):
        ablations.append(Ablation(hide=tuple(layout.history_titles[k])))
        if prompt.hybrid:
            ablations.append(Ablation(neutral_slots=(layout.history_slots[k],)))
    with _attributing(model, upcast):
        full, ablated, calls = ablation_log_likelihoods(model, prompt, target, ablations, slot_baseline, batch_size)
        compute = str(model.llm.get_input_embeddings().weight.dtype).replace("torch.", "")
    effects = [full - a for a in ablated]
    step = 2 if prompt.hybrid else 1
    titles = effects[::step]
    slots = effects[1::step] if prompt.hybrid else [None] * len(titles)
    raw = [0.0] * len(prompt.input_ids)
    for k in range(len(prompt.history)):
        for p in layout.history_titles[k]:
            raw[p] = titles[k]
        if slots[k] is not None:
            raw[layout.history_slots[k]] = slots[k]
    return _result(model, prompt, layout, "item", "ablation", target, source, full, raw, titles, slots,
                   {"forward_passes": cost["forward_passes"] + calls, "sequences": cost["sequences"] + len(ablations) + 1},
                   started, {"title_ablation": "attention mask (deletion)", "compute_dtype": compute,
                             "slot_baseline": slot_baseline if prompt.hybrid else None})


def attribute_tokens(model: LLaRA, prompt: Prompt, target: int | None = None, method: str = "ig", n_steps: int = 8,
                     slot_baseline: str = "mean", internal_batch_size: int | None = None, upcast: bool = True) -> Attribution:
    """Token-level attribution with captum on the post-splice input embeddings (see the module docstring).

    ``ig``: integrated gradients (Gauss-Legendre, ``n_steps`` points) from a "blank" prompt: every text token at
    the ``<PH>`` embedding, every slot at the neutral slot vector, a leading BOS kept as is (it is an attention sink;
    interpolating it would dominate the path). ``grad_x_input``: one forward and backward. Scores are summed over
    the embedding dimension, then divided by the largest absolute value for display."""
    from captum.attr import InputXGradient, IntegratedGradients

    if method not in TOKEN_METHODS:
        raise ValueError(f"unknown token-level method {method!r}; valid: {', '.join(TOKEN_METHODS)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    started = time.perf_counter()
    layout = prompt_layout(model, prompt)
    counter = {"calls": 0, "rows": 0}

    def forward(inp: torch.Tensor) -> torch.Tensor:  # (B, L, D) float32 -> (B,)
        counter["calls"] += 1
        counter["rows"] += inp.shape[0]
        seq = torch.cat([inp.to(embeds.dtype), embeds[:, length:].expand(inp.shape[0], -1, -1)], dim=1)
        return _target_score(model, prompt, seq, torch.ones(seq.shape[:2], dtype=torch.long, device=seq.device), answer, target)

    target, source, cost = _check_target(model, prompt, target)
    with _attributing(model, upcast):
        embeds, answer = _spliced(model, prompt, target)  # (1, L + m, D); the answer part is held fixed
        length = len(prompt.input_ids)
        x = embeds[:, :length].float().clone()  # (1, L, D): the float32 leaf captum differentiates
        if method == "ig":
            with torch.no_grad():
                base = neutral_slot_vector(model, "placeholder").expand_as(x).clone()  # (1, L, D)
                if prompt.slot_positions:
                    base[0, list(prompt.slot_positions)] = neutral_slot_vector(model, slot_baseline)
                if prompt.input_ids[0] == model.tokenizer.bos_token_id:
                    base[0, 0] = x[0, 0]
            attr, delta = IntegratedGradients(forward).attribute(
                x, baselines=base, n_steps=n_steps, method="gausslegendre",
                internal_batch_size=internal_batch_size or n_steps, return_convergence_delta=True)
            # completeness: sum of scores = logL(x) - logL(baseline) - delta; a large delta: too few steps
            details = {"convergence_delta": float(delta.sum()), "n_steps": n_steps, "slot_baseline": slot_baseline,
                       "text_baseline": PLACEHOLDER_TOKEN}
        else:
            attr, details = InputXGradient(forward).attribute(x.requires_grad_()), {}
        details["compute_dtype"] = str(embeds.dtype).replace("torch.", "")
        with torch.no_grad():
            full = float(forward(x)[0])
    raw = attr[0].float().sum(-1).tolist()  # (L,)
    titles = [float(sum(raw[p] for p in positions)) for positions in layout.history_titles]
    slots = [None if p is None else raw[p] for p in layout.history_slots]
    return _result(model, prompt, layout, "token", method, target, source, full, raw, titles, slots,
                   {"forward_passes": cost["forward_passes"] + counter["calls"], "sequences": cost["sequences"] + counter["rows"]},
                   started, details)
