"""Building a fresh LLaRA: the base LLM (+ LoRA), the frozen recommender's item table, the projectors and heads.

``build_llara`` is what training starts from and what ``llara.model.loader`` fills with a checkpoint's weights;
``model_options`` turns a saved training config into its keyword arguments.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..prompt.prompts import PromptBuilder
from .item_features import LANGUAGE_FEATURES, build_item_features, resolve_item_features
from .llara_model import LLaRA
from .next_item import NextItemHead

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # the paper's: every projection


def attach_lora(llm: nn.Module, r: int = 8, alpha: int = 32, dropout: float = 0.1, targets: str = LORA_TARGETS) -> nn.Module:
    """Wrap ``llm`` with a LoRA adapter; base weights (and the embedding rows of new tokens) stay frozen."""
    from .cpu4bit import import_bitsandbytes

    import_bitsandbytes()  # before peft, which imports it (see there)
    from peft import LoraConfig, get_peft_model

    names = [t.strip() for t in targets.split(",") if t.strip()]
    present = {n.rsplit(".", 1)[-1] for n, _ in llm.named_modules()}
    missing = [t for t in names if t not in present]
    if not names or missing:
        raise ValueError(f"LoRA targets {missing or names} are not modules of this model; it has e.g. "
                         f"{', '.join(sorted(p for p in present if p.endswith('proj'))[:8])}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, task_type="CAUSAL_LM")
    return get_peft_model(llm, config)


def model_options(config: dict) -> dict:
    """``build_llara`` keyword arguments from a training config (a saved one may predate some options)."""
    return {"head_weight": float(config.get("head_weight", 0.0)), "next_item": float(config.get("next_weight", 0.0)) > 0,
            "user_token": bool(config.get("user_token", False)), "answer": str(config.get("answer", "title")),
            "residual": bool(config.get("residual", False)),
            "item_features": resolve_item_features(str(config.get("item_features", "auto")), bool(config.get("text_items", False))),
            "weights": {"title": float(config.get("title_weight", 1.0)), "next": float(config.get("next_weight", 0.0)),
                        "dense": float(bool(config.get("dense", True))), "distill": float(config.get("distill_weight", 0.0)),
                        "follow": float(config.get("follow_weight", 0.0)),
                        "follow_top": float(config.get("follow_top", 0)),
                        "follow_temperature": float(config.get("follow_temperature", 1.0)),
                        "mutual": float(config.get("mutual_weight", 0.0))}}


def build_llara(
    dataset,
    recommender_stem: str,
    base_model: str = "smollm2-135m",
    precision: str = "bf16",
    projector_spec: str = "mlp2x_gelu",
    norm_to_tokens: bool = True,
    lora: dict | None = None,
    seed: int = 0,
    head_weight: float = 0.0,
    next_item: bool = False,
    user_token: bool = False,
    residual: bool = False,
    weights: dict[str, float] | None = None,
    item_features: str = "recommender",
    device: str | torch.device | None = None,
    answer: str = "title",
) -> LLaRA:
    """A fresh LLaRA for ``dataset``: base LLM (+ LoRA when ``lora`` is given), frozen recommender table, projector.

    ``norm_to_tokens`` scales each projected vector to the mean norm of the LLM's token embeddings, so a slot is
    on the same scale as the words around it from the first step. ``device``: where the LLM is loaded (default
    CPU); the rest of the model follows it. ``answer``: how the prompts' answers name the pick
    (``llara.prompt.prompts.ANSWERS``).
    """
    from ..recommenders import load_recommender
    from .llm import load_base_model, token_embedding_norm
    from .projector import build_projector

    if lora is not None and precision == "int8":
        raise ValueError("int8 is for inference only: train with --precision bf16, fp32 or nf4")
    recommender = load_recommender(recommender_stem, n_items=dataset.n_items)
    llm: Any  # the base model, PEFT-wrapped once LoRA is attached (its attributes pass through)
    llm, tokenizer = load_base_model(base_model, precision=precision, seed=seed, device=device)
    target_norm = token_embedding_norm(llm) if norm_to_tokens else None
    torch.manual_seed(seed)
    projector = build_projector(projector_spec, recommender.dim, llm.config.hidden_size, target_norm=target_norm)
    if lora is not None:
        llm = attach_lora(llm, **lora)
    context = getattr(llm.config, "max_position_embeddings", None)
    builder = PromptBuilder(tokenizer, dataset.catalog, max_length=context, user_token=user_token, answer=answer)
    user_projector = next_head = None
    if user_token:
        user_projector = build_projector(projector_spec, recommender.dim, llm.config.hidden_size, target_norm=target_norm)
    if next_item:
        if item_features in LANGUAGE_FEATURES and (user_token or residual):
            raise ValueError(f"{item_features} item features are for text-only models: no user token or residual scoring")
        # A model trained on text-only prompts with language features never sees the recommender.
        titles = [builder.answer_ids(i)[:-1] for i in range(len(dataset.catalog))] if item_features == "titles" else []
        features, identity = build_item_features(item_features, recommender, llm.get_input_embeddings().weight, titles,
                                                 dataset.catalog)
        d_key = recommender.dim + (64 if identity and features.shape[1] > identity else 0)
        next_head = NextItemHead(features, llm.config.hidden_size, d_key=d_key, residual=residual, identity_dims=identity)
    head = None
    if head_weight > 0:
        head = nn.Linear(llm.config.hidden_size, 1)
        nn.init.zeros_(head.weight)  # starts neutral: every candidate scores the same
        nn.init.zeros_(head.bias)
    return LLaRA(llm, builder, recommender.item_embeddings(), projector, head=head, head_weight=head_weight,
                 recommender=recommender, user_projector=user_projector, next_head=next_head, weights=weights)
