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
- **item level, whole item** (``llara.attribution.deletion.attribute_deletion``, ``deletion``): leave-one-out. Each
  watched item is removed from the history and the prompt rebuilt (its title, its slot and, where the model has one, the user slot
  the recommender encodes from the history), then scored alone in the model's own precision, exactly as it answers:
  ``score(full) - score(without the item)``. One pass per watched item; no interaction between items is measured.
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

from ..constants import PLACEHOLDER_TOKEN
from ..model.llara_model import LLaRA
from ..model.llm import unpack_4bit_for_training
from ..prompt.batch import collate
from ..prompt.prompts import Prompt
from .prompt_layout import Layout, prompt_layout

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
    title_score: float | None  # None for the "IDs only" ablation (the prompt lists no titles) and for deletion
    embedding_score: float | None  # None for a text-only prompt (it has no embedding slots) and for deletion
    total: float  # title + embedding (the sum of two separate effects), or the whole item's effect (deletion)


@dataclass
class Attribution:
    level: str  # "item" or "token"
    method: str  # "deletion", "ablation", "ig" or "grad_x_input"
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

    def slot_shares(self) -> dict[int, float]:
        """Each embedding slot's share of this attribution, by prompt position: ``|its score| / sum of |scores|``
        over what the method scores (every token for the token methods; every title and slot of the watched items
        for ``ablation``). Empty for a text-only prompt and for ``deletion`` (it scores whole items, not slots)."""
        if not self.hybrid or self.method == "deletion":
            return {}
        if self.level == "token":
            total = sum(abs(t.raw) for t in self.tokens)
            slots = [p for p, t in enumerate(self.tokens) if t.part.endswith("slot")]
        else:
            total = sum(abs(v) for it in self.items for v in (it.title_score, it.embedding_score) if v is not None)
            slots = [p for p, t in enumerate(self.tokens) if t.part == "history slot"]
        return {p: abs(self.tokens[p].raw) / total for p in slots} if total > 0 else {}

    def words(self) -> list[tuple[str, float | None]]:
        """``(text, score)`` per word for ``gr.HighlightedText``: sub-word tokens merged into the word they spell
        ("Sch", "ind", "ler" -> "Schindler"), each word scored by its tokens' raw scores (summed at token level) over the largest
        absolute word score (so in [-1, 1]); embedding slots and special tokens stay words of their own, and
        whitespace (line breaks included) is kept in the text, unscored where it stands alone."""
        groups: list[list[TokenScore]] = []
        for tok in self.tokens:
            alone = tok.part.endswith("slot") or (tok.text.startswith("<") and tok.text.endswith(">"))
            starts = not groups or alone or tok.text[:1].isspace() or tok.text == "" or groups[-1][-1].text[-1:].isspace() \
                or groups[-1][-1].part.endswith("slot") or groups[-1][-1].text.endswith(">")
            if starts:
                groups.append([tok])
            else:
                groups[-1].append(tok)
        # token level: a word's effect is the sum of its tokens'; item level gives every token of a part the part's
        # score, so a word (all of one part) takes that score once
        sums = [sum(t.raw for t in g) / (1 if self.level == "token" else len(g)) for g in groups]
        top = max((abs(v) for v in sums), default=0.0)
        out: list[tuple[str, float | None]] = []
        for g, total in zip(groups, sums):
            text = "".join(t.text for t in g)
            out.append((text, None if not text.strip() else (total / top if top > 0 else 0.0)))
        return out


@dataclass(frozen=True)
class Ablation:
    """One ablated variant: prompt positions deleted (masked) and slot positions given the neutral vector."""

    hide: tuple[int, ...] = ()
    neutral_slots: tuple[int, ...] = ()


# ---- scoring -----------------------------------------------------------------------------------------------------

def check_target(model: LLaRA, prompt: Prompt, target: int | None) -> tuple[int, str, dict]:
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
        return model.neutral_slot()
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
    hidden = model.final_hidden(embeds[:, : q + 1], mask[:, : q + 1], positions)  # (B, q + 1, D)
    logits = model.next_head(hidden[:, q])[:, list(prompt.candidates)]  # (B, C)
    return logits.log_softmax(-1)[:, prompt.candidates.index(target)]


@torch.no_grad()
def _spliced(model: LLaRA, prompt: Prompt, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs_embeds`` ``(1, L + m, D)`` of prompt + answer (slots spliced) and the answer ids ``(m,)``."""
    answer = model.builder.answer_for(prompt, target)
    batch = collate([replace(prompt, target=target, target_ids=tuple(answer))], model.pad_id, with_targets=True,
                    padding_side="right", device=model.device)
    return model.embed(batch), torch.tensor(answer, device=model.device)


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
            if ab.neutral_slots and neutral is not None:  # (never None when a variant blanks a slot)
                x[row, list(ab.neutral_slots)] = neutral
        scores += _target_score(model, prompt, x, mask, answer, target).tolist()
        calls += 1
    return scores[0], scores[1:], calls


def attribution_result(model: LLaRA, prompt: Prompt, layout: Layout, level: str, method: str, target: int, source: str,
            full: float, raw: list[float], titles: list[float | None], slots: list[float | None], cost: dict, started: float,
            details: dict, totals: list[float] | None = None) -> Attribution:
    """Package per-token raw scores (normalised by the largest |raw|) and per-item title/slot scores (``totals``:
    each item's whole effect where it was measured as one, else title + slot)."""
    top = max((abs(r) for r in raw), default=0.0)
    texts = [model.tokenizer.decode([t]) for t in prompt.input_ids]
    tokens = [TokenScore(text, (r / top) if top > 0 else 0.0, r, part, item)
              for text, r, part, item in zip(texts, raw, layout.parts, layout.items)]
    totals = totals or [(t or 0.0) + (s or 0.0) for t, s in zip(titles, slots)]
    items = [ItemScore(item, model.builder.titles[item], t, s, total)
             for item, t, s, total in zip(prompt.history, titles, slots, totals)]
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
    target, source, cost = check_target(model, prompt, target)
    ablations = []  # per history item: its title (when listed), then its slot (hybrid)
    for k in range(len(prompt.history)):
        if prompt.titles:
            ablations.append(Ablation(hide=tuple(layout.history_titles[k])))
        slot = layout.history_slots[k]
        if prompt.hybrid and slot is not None:  # a hybrid prompt has a slot for every watched item
            ablations.append(Ablation(neutral_slots=(slot,)))
    with _attributing(model, upcast):
        full, ablated, calls = ablation_log_likelihoods(model, prompt, target, ablations, slot_baseline, batch_size)
        compute = str(model.llm.get_input_embeddings().weight.dtype).replace("torch.", "")
    effects = iter(full - a for a in ablated)
    titles: list[float | None] = []
    slots: list[float | None] = []
    for _ in prompt.history:
        titles.append(next(effects) if prompt.titles else None)
        slots.append(next(effects) if prompt.hybrid else None)
    raw = [0.0] * len(prompt.input_ids)
    for title, positions, slot_score, slot in zip(titles, layout.history_titles, slots, layout.history_slots):
        for p in positions:  # none where the prompt lists no titles
            raw[p] = title or 0.0
        if slot_score is not None and slot is not None:
            raw[slot] = slot_score
    return attribution_result(model, prompt, layout, "item", "ablation", target, source, full, raw, titles, slots,
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
        return _target_score(model, prompt, seq, torch.ones(seq.shape[:2], dtype=torch.long, device=seq.device), answer, explained)

    target, source, cost = check_target(model, prompt, target)
    explained: int = target  # what the closure below reads: a name that is never None
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
    titles = [float(sum(raw[p] for p in positions)) if prompt.titles else None for positions in layout.history_titles]
    slots = [None if p is None else raw[p] for p in layout.history_slots]
    return attribution_result(model, prompt, layout, "token", method, target, source, full, raw, titles, slots,
                   {"forward_passes": cost["forward_passes"] + counter["calls"], "sequences": cost["sequences"] + counter["rows"]},
                   started, details)
