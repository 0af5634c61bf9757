"""The LLaRA model: frozen recommender item table -> projector -> spliced into the (LoRA-wrapped) LLM's inputs.

Three ways to answer a prompt:

- ``generate``: greedy decoding of a left-padded batch, first line kept (the paper's protocol);
- ``constrained``: greedy decoding restricted to the candidate answers by a prefix trie: always valid;
- ``rank``: the log-likelihood of every candidate answer, the shared prompt computed once and its KV cache
  reused for all continuations.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..constants import IGNORE_INDEX
from ..data import pad_histories
from ..device import autocast_method
from ..prompt.batch import Batch, collate
from ..prompt.prompts import AnswerTrie, Prompt, PromptBuilder
from .follow import follow_terms
from .next_item import NextItemHead, distillation_loss, next_item_loss
from .projector import Projector

if TYPE_CHECKING:
    from ..recommenders.base import SequentialRecommender


class LLaRA(nn.Module):
    """Owns the frozen recommender item table ``(n_items, d_rec)``, the projector and the LLM."""

    # a transformers causal LM, bare or PEFT-wrapped (LoRA): what it offers depends on the wrapper, so it is not
    # typed as nn.Module, whose attribute access mypy reads as a tensor or a submodule
    llm: Any
    item_table: torch.Tensor  # a registered buffer

    def __init__(self, llm: nn.Module, builder: PromptBuilder, item_table: torch.Tensor, projector: Projector,
                 head: nn.Linear | None = None, head_weight: float = 1.0, recommender: SequentialRecommender | None = None,
                 user_projector: Projector | None = None, next_head: NextItemHead | None = None,
                 weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if item_table.dim() != 2 or item_table.shape[1] != projector.d_in:
            raise ValueError(f"item table {tuple(item_table.shape)} does not fit a projector with d_in={projector.d_in}")
        if item_table.shape[0] != len(builder.catalog):
            raise ValueError(f"the recommender has {item_table.shape[0]} items but the catalog has {len(builder.catalog)}")
        self.llm, self.builder, self.projector = llm, builder, projector
        self.register_buffer("item_table", item_table.detach().float().clone(), persistent=False)  # frozen
        # Optional candidate head (not in the paper): a linear score of the final hidden state at the token after each
        # candidate title, trained with cross-entropy over the candidates. It tells the model which of the 20 is right
        # in one pass, instead of only through the title tokens, and ranks all candidates in one forward pass.
        self.head, self.head_weight = head, head_weight
        # Next-item levers (llara.model.next_item). The recommender is frozen and always in eval mode (see ``train``).
        if (user_projector is not None or (next_head is not None and next_head.gate is not None)) and recommender is None:
            raise ValueError("the user token and residual scoring need the recommender")
        if user_projector is not None and not builder.user_token:
            raise ValueError("a user projector needs a PromptBuilder with user_token=True")
        self.recommender, self.user_projector, self.next_head = recommender, user_projector, next_head
        if recommender is not None:
            recommender.requires_grad_(False).eval()
        # loss weights: title (the paper's LM loss), next (next-item CE), dense (every history slot or only the
        # query), distill (KL from the recommender over the candidates), follow (KL from the next-item head over the
        # candidates to their answers' likelihoods: the written title follows the ranking), mutual (its reverse: the
        # head moves towards the words)
        self.weights = {"title": 1.0, "next": 1.0, "dense": 1.0, "distill": 0.0, "follow": 0.0, "mutual": 0.0,
                        **(weights or {})}
        self._slot_override: torch.Tensor | None = None  # set by ``blank_slots``
        # everything but the LLM follows the LLM's device (the loader put it where --device asked); passes on a CUDA
        # device run under bf16 autocast where it has bf16 (llara.device), attributions aside
        for part in (projector, head, recommender, user_projector, next_head):
            if part is not None:
                part.to(self.device)
        self.item_table = self.item_table.to(self.device)
        self.use_autocast = True

    def train(self, mode: bool = True) -> LLaRA:
        super().train(mode)
        if self.recommender is not None:
            self.recommender.eval()  # a frozen teacher: no dropout, whatever the LLM does
        return self

    @contextlib.contextmanager
    def blank_slots(self, vector: torch.Tensor):
        """Within the block every slot carries ``vector`` ``(D,)`` instead of its item's projection: the
        "drop item embeddings" ablation with the prompt layout kept. Not thread-safe: callers serialise requests."""
        self._slot_override = vector.detach()
        try:
            yield self
        finally:
            self._slot_override = None

    @torch.no_grad()
    def neutral_slot(self) -> torch.Tensor:
        """The vector that stands for "no item" in a slot ``(D,)`` float32: the mean projected vector over the
        catalog (an average item), rescaled to the mean norm of the projected vectors, since averaging shrinks it
        and a short vector is itself unusual input. What a removed item slot or user slot carries."""
        vectors = self.projector(self.item_table).float()  # (N, d_rec) -> (N, D)
        mean = vectors.mean(0)
        return mean * (vectors.norm(dim=-1).mean() / mean.norm().clamp_min(1e-12))

    @property
    def device(self) -> torch.device:
        """Where the LLM reads its inputs (its input embeddings): every tensor the model creates goes there."""
        return self.llm.get_input_embeddings().weight.device

    @property
    def tokenizer(self):
        return self.builder.tokenizer

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def placeholder_rows(self, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Input-embedding rows of the placeholder tokens (the only rows that differ from the base model), from the
        LLM's own matrix or from ``weight`` (the full matrix gathered from a sharded run)."""
        weight = self.llm.get_input_embeddings().weight if weight is None else weight
        ids = [self.builder.history_id, self.builder.candidate_id, self.builder.placeholder_id]
        return {"ids": torch.tensor(ids, device=weight.device), "rows": weight[ids].detach().float()}

    @torch.no_grad()
    def load_placeholder_rows(self, saved: dict[str, torch.Tensor]) -> None:
        weight = self.llm.get_input_embeddings().weight
        ids = [self.builder.history_id, self.builder.candidate_id, self.builder.placeholder_id]
        if saved["ids"].tolist() != ids:
            raise ValueError(f"placeholder token ids {saved['ids'].tolist()} differ from this tokenizer's {ids}")
        weight[ids] = saved["rows"].to(weight.device, weight.dtype)

    def embed(self, batch: Batch) -> torch.Tensor:
        """``inputs_embeds`` ``(B, T, D)`` with projected item vectors at the slots, in one vectorised step."""
        embedding = self.llm.get_input_embeddings()
        embeds = embedding(batch.input_ids)  # (B, T, D)
        if batch.slot_items.numel() == 0:
            return embeds
        assert batch.slot_rows.numel() == batch.slot_cols.numel() == batch.slot_items.numel(), "slot count != item count"
        vectors = self.projector(self.item_table[batch.slot_items]).to(embeds.dtype)  # (S, d_rec) -> (S, D)
        if self._slot_override is not None:
            vectors = self._slot_override.to(embeds.dtype).expand_as(vectors)
        elif batch.slot_blank is not None:  # removed parts (modality dropout, part ablation): the neutral vector
            vectors = torch.where(batch.slot_blank[:, None], self.neutral_slot().to(embeds.dtype), vectors)
        # index_put is out of place: gradients flow to the projector, the embedding rows of the slots get none.
        embeds = embeds.index_put((batch.slot_rows, batch.slot_cols), vectors)
        if self.user_projector is not None and batch.user_rows is not None and batch.user_rows.numel():
            states = self.sequence_states([batch.histories[int(b)] for b in batch.user_rows])  # (U, d_rec)
            users = self.user_projector(states).to(embeds.dtype)  # (U, D)
            if self._slot_override is not None:
                users = self._slot_override.to(embeds.dtype).expand_as(users)
            elif batch.user_blank is not None:
                users = torch.where(batch.user_blank[:, None], self.neutral_slot().to(embeds.dtype), users)
            embeds = embeds.index_put((batch.user_rows, batch.user_cols), users)
        return embeds

    def _teacher(self) -> SequentialRecommender:
        """The frozen recommender; a model built without one (text-only prompts) cannot read histories."""
        if self.recommender is None:
            raise ValueError("this model has no recommender: it cannot encode or score histories")
        return self.recommender

    def _padded(self, histories) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(B, L)`` histories and ``(B,)`` lengths for the recommender, on the model's device."""
        teacher = self._teacher()
        seqs, lens = pad_histories(list(histories), teacher.pad_id, teacher.max_len)
        return torch.as_tensor(seqs, device=self.device), torch.as_tensor(lens, device=self.device)

    @torch.no_grad()
    def sequence_states(self, histories) -> torch.Tensor:
        """The frozen recommender's ``encode`` of each history: ``(B, d_rec)``."""
        return self._teacher().encode(*self._padded(histories)).float()

    @torch.no_grad()
    def recommender_scores(self, histories) -> torch.Tensor:
        """The frozen recommender's scores of every item ``(B, N)``."""
        return self._teacher().full_scores(*self._padded(histories)).float()

    @autocast_method
    def forward(self, batch: Batch, **kwargs):
        use_head = self.head is not None and batch.cand_cols is not None
        use_next = self.next_head is not None and batch.query_cols is not None
        labels = batch.labels if self.weights["title"] > 0 else None
        # the follow loss scores every candidate's answer from this pass's KV cache (llara/model/follow.py)
        follow = self.weights["follow"] > 0 and labels is not None and use_next and batch.candidates is not None
        if follow and not self.builder.indexed:  # titles are scored as continuations of this pass's cache
            kwargs = {**kwargs, "use_cache": True}
        # the LM's output, to which the heads' logits and losses are added as attributes (transformers' output
        # classes declare only the LM's own fields)
        out: Any
        if labels is None and (use_head or use_next) and not kwargs:  # only the heads read the pass: no output layer
            hidden = self.final_hidden(self.embed(batch), batch.attention_mask, batch.position_ids)
            out = CausalLMOutputWithPast(hidden_states=(hidden,))
        else:
            out = self.llm(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, labels=labels, output_hidden_states=use_head or use_next,
                           **kwargs)
        losses: dict[str, torch.Tensor] = {}
        if out.loss is not None:
            losses["title"] = out.loss * self.weights["title"]
        if use_head and batch.cand_cols is not None:  # (use_head implies it: the check narrows the type)
            out.candidate_logits = self.candidate_logits(out.hidden_states[-1], batch.cand_cols)  # (B, C)
            if batch.cand_targets is not None:
                out.head_loss = nn.functional.cross_entropy(out.candidate_logits, batch.cand_targets)
                losses["head"] = out.head_loss * self.head_weight
        if use_next:
            self._next_item_outputs(out, batch, losses)
        if follow:
            top = int(self.weights.get("follow_top", 0))
            temperature = float(self.weights.get("follow_temperature", 1.0))
            words_loss, head_loss = follow_terms(self, out, batch, top, temperature)
            losses["follow"] = words_loss * self.weights["follow"]
            if self.weights.get("mutual", 0.0) > 0:  # the head moves towards the words too
                losses["mutual"] = head_loss * self.weights["mutual"]
        out.losses = {k: float(v.detach()) for k, v in losses.items()}
        out.loss = sum(losses.values()) if losses else None
        return out

    def final_hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The last layer's normed hidden states ``(B, T, D)`` (what ``hidden_states[-1]`` of a full pass holds):
        the decoder alone, without the output layer, for the heads that read hidden states only. Asking the LM for
        one position's logits instead costs more than the whole pass once its output layer is frozen: torch then
        multiplies the sliced ``(B, 1, D)`` states by a broadcast copy of the ``(vocab, D)`` weight (the before /
        after figures: docs/performance.md)."""
        return self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      use_cache=False).last_hidden_state

    def _next_item_outputs(self, out, batch: Batch, losses: dict) -> None:
        """Next-item logits at each query ``(B, N)`` (and residual ones) plus the losses their targets allow."""
        head = self.next_head
        if head is None:  # forward calls this only for a model with the head
            raise ValueError("this model has no next-item head (train with --next-weight > 0)")
        hidden = out.hidden_states[-1]  # (B, T, D)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        out.item_logits = head(hidden[rows, batch.query_cols])  # (B, N)
        rec = None
        if self.recommender is not None and (head.gate is not None or self.weights["distill"] > 0):
            rec = self.recommender_scores(batch.histories).to(out.item_logits.device)  # (B, N)
        if head.gate is not None:
            if rec is None:  # __init__ refuses a residual head without the recommender
                raise ValueError("residual scoring (--residual) needs the recommender")
            out.residual_logits = head.residual(out.item_logits, rec)
        targets = batch.targets
        if targets is None or not bool((targets != IGNORE_INDEX).any()):
            return
        w = self.weights["next"]
        if (self.weights["dense"] > 0 and batch.next_cols is not None and batch.next_cols.numel()
                and batch.next_items is not None):  # collate sets next_cols and next_items together
            # every history slot (and the user slot) predicts the item that followed it, over the whole catalog
            dense = head(hidden[batch.next_rows, batch.next_cols])  # (H, N)
            losses["next"] = next_item_loss(dense, batch.next_items) * w
        else:
            losses["next"] = next_item_loss(out.item_logits, targets) * w
        if head.gate is not None:
            losses["residual"] = next_item_loss(out.residual_logits, targets) * w
        if self.weights["distill"] > 0 and batch.candidates is not None:
            if rec is None:
                raise ValueError("distillation (weight 'distill' > 0) needs the recommender")
            cands = batch.candidates.to(out.item_logits.device)  # (B, C)
            losses["distill"] = distillation_loss(out.item_logits.gather(1, cands), rec.gather(1, cands)) * self.weights["distill"]

    @torch.inference_mode()
    def item_scores(self, prompts: list[Prompt], residual: bool = False) -> torch.Tensor:
        """Next-item scores of every catalog item ``(B, N)`` for each prompt, read at its query position; the pass
        runs over the prompts cut after it, so it costs the history alone and serves any candidate set."""
        pure, res = self.all_item_scores(prompts)
        if not residual:
            return pure
        if res is None:
            raise ValueError("this model was trained without residual scoring (--residual)")
        return res

    @torch.inference_mode()
    def all_item_scores(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(next-item scores, residual scores or None)``, each ``(B, N)``, from one pass."""
        if self.next_head is None:
            raise ValueError("this model has no next-item head (train with --next-weight > 0)")
        out = self.forward(collate([p.truncated() for p in prompts], self.pad_id, device=self.device))
        res = getattr(out, "residual_logits", None)
        return out.item_logits.float(), None if res is None else res.float()

    def rank_items(self, prompt: Prompt, residual: bool = False) -> list[tuple[int, float]]:
        """``(item, log-softmax over the candidates)`` for every candidate, best first, from the next-item head."""
        return rank_candidates(self.item_scores([prompt], residual=residual)[0], prompt.candidates)

    def candidate_logits(self, hidden: torch.Tensor, cand_cols: torch.Tensor) -> torch.Tensor:
        """Head scores ``(B, C)`` from final hidden states ``(B, T, D)`` at the candidate positions ``(B, C)``."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        picked = hidden[rows, cand_cols].float()  # (B, C, D)
        if self.head is None:
            raise ValueError("this model has no candidate head (train with --head-weight > 0)")
        return self.head(picked.to(self.head.weight.dtype)).squeeze(-1)

    @torch.inference_mode()
    def rank_head(self, prompt: Prompt) -> list[tuple[int, float]]:
        """``(item, head score)`` for every candidate, best first: one forward pass over the prompt."""
        if self.head is None:
            raise ValueError("this model has no candidate head (train with --head-weight > 0)")
        out = self.forward(collate([prompt], self.pad_id, device=self.device))
        scores = out.candidate_logits[0].float().log_softmax(-1).tolist()
        return sorted(zip(prompt.candidates, scores), key=lambda x: -x[1])

    def loss(self, prompts: list[Prompt]) -> torch.Tensor:
        """Mean token cross-entropy on the target titles (prompt tokens masked)."""
        batch = collate(prompts, self.pad_id, with_targets=True, padding_side="right", device=self.device)
        return self.forward(batch).loss

    # ---- answering --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    @autocast_method
    def generate(self, prompts: list[Prompt], max_new_tokens: int = 64) -> list[str]:
        """Greedy decoding of a left-padded batch (transformers' ``generate`` over the spliced ``inputs_embeds``,
        each row stopping at its first newline or EOS); returns the first line of each answer."""
        from transformers import GenerationConfig

        batch = collate(prompts, self.pad_id, padding_side="left", device=self.device)
        stop = sorted(self._newline_ids() | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()))
        # a config of its own: the base model's may carry sampling or repetition settings the paper's greedy lacks
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                  pad_token_id=self.pad_id)
        # with inputs_embeds alone, generate returns only the new tokens (B, <= max_new_tokens)
        out = self.llm.generate(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
                                generation_config=config)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip().split("\n")[0].strip() if t.strip() else "" for t in texts]

    def _newline_ids(self) -> set[int]:
        if not hasattr(self, "_newlines"):
            vocab = self.tokenizer.get_vocab()
            decoded = self.tokenizer.convert_ids_to_tokens(list(vocab.values()))
            ids = list(vocab.values())
            # tokens that contain a newline end the first line; byte-level BPE spells "\n" as "Ċ"
            self._newlines = {i for i, t in zip(ids, decoded) if t and ("\n" in t or "Ċ" in t)}
        return self._newlines

    def _prefill(self, prompt: Prompt):
        """Run one prompt; returns the last position's log-probs ``(V,)`` and the KV cache."""
        batch = collate([prompt], self.pad_id, device=self.device)
        out = self.llm(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=True)
        return out.logits[0, -1].float().log_softmax(-1), out.cache, batch.input_ids.shape[1]

    @torch.inference_mode()
    @autocast_method
    def constrained(self, prompt: Prompt) -> int:
        """Greedy decoding over the candidate answers only; returns the chosen item."""
        trie = AnswerTrie({c: self.builder.answer_for(prompt, c) for c in prompt.candidates})
        logp, past, length = self._prefill(prompt)
        prefix: list[int] = []
        while True:
            alive = trie.consistent(prefix)
            if len(alive) == 1:  # the rest of the answer is forced: no need to decode it
                return alive[0]
            allowed = trie.next_tokens(prefix)
            tok = allowed[int(logp[allowed].argmax())]
            prefix.append(tok)
            out = self.llm(input_ids=torch.tensor([[tok]], device=self.device),
                           position_ids=torch.tensor([[length]], device=self.device), cache=past, use_cache=True)
            past, length = out.cache, length + 1
            logp = out.logits[0, -1].float().log_softmax(-1)

    @torch.inference_mode()
    @autocast_method
    def rank(self, prompt: Prompt, normalize: bool = False) -> list[tuple[int, float]]:
        """``(item, log-likelihood of its answer)`` for every candidate, best first.

        The prompt is run once; its KV cache is repeated for the ``C`` continuations, which run as one right-padded
        batch (causal attention: a real token never sees the padding after it). ``normalize`` divides by the
        number of answer tokens.
        """
        answers = [self.builder.answer_for(prompt, c) for c in prompt.candidates]
        logp0, past, length = self._prefill(prompt)
        width = max(len(a) for a in answers)
        cont = torch.tensor([a + [self.pad_id] * (width - len(a)) for a in answers], device=self.device)  # (C, W)
        past.batch_repeat_interleave(len(answers))
        positions = torch.arange(length, length + width, device=self.device)[None].expand(len(answers), -1)
        mask = torch.ones((len(answers), length + width), dtype=torch.long, device=self.device)
        out = self.llm(input_ids=cont, attention_mask=mask, position_ids=positions, cache=past, use_cache=True)
        logp = out.logits.float().log_softmax(-1)  # (C, W, V): logp[:, j] predicts token j + 1
        scores = []
        for i, a in enumerate(answers):
            total = float(logp0[a[0]]) + sum(float(logp[i, j - 1, a[j]]) for j in range(1, len(a)))
            scores.append(total / len(a) if normalize else total)
        return sorted(zip(prompt.candidates, scores), key=lambda x: -x[1])

    @torch.inference_mode()
    @autocast_method
    def rank_uncached(self, prompt: Prompt, normalize: bool = False) -> list[tuple[int, float]]:
        """The same scores as ``rank``, each candidate run from scratch: the reference for tests and benchmarks."""
        scores = []
        for c in prompt.candidates:
            answer = self.builder.answer_for(prompt, c)
            full = dataclasses.replace(prompt, target=c, target_ids=tuple(answer))
            batch = collate([full], self.pad_id, with_targets=True, device=self.device)
            logits = self.llm(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).logits[0].float().log_softmax(-1)
            start = len(prompt.input_ids)
            total = sum(float(logits[start + j - 1, tok]) for j, tok in enumerate(answer))
            scores.append(total / len(answer) if normalize else total)
        return sorted(zip(prompt.candidates, scores), key=lambda x: -x[1])


def rank_candidates(scores: torch.Tensor, candidates) -> list[tuple[int, float]]:
    """``(item, log-softmax over the candidates)`` best first, from one prompt's next-item scores ``(N,)``."""
    logp = scores[list(candidates)].log_softmax(-1).tolist()
    return sorted(zip(candidates, logp), key=lambda x: -x[1])

