"""Warm start: a new training run that begins from a trained checkpoint's weights (``python -m llara.train
--init-from``), with its own losses, budget and schedule.

This is how a second objective is added to a model that already reads the history (the next-item model taught
to also write its pick, ``--follow-weight``) without paying for its first run again. Unlike ``--resume`` the run is
new: fresh optimizer, fresh schedule, its own output folder; what must equal the starting checkpoint is the
architecture (the flags below), taken from it unless given, and refused when given differently.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import portable_path, read_llara_meta
from ..model.build import model_options
from ..model.loader import load_llara

# TrainConfig fields that define the weights' shapes and meaning: a warm start inherits them
ARCHITECTURE = ("base_model", "precision", "recommender", "projector", "norm_to_tokens", "lora_r", "lora_alpha",
                "lora_targets", "user_token", "residual", "text_items", "item_features")
# heads that exist only when their loss weight is > 0
HEADS = {"head_weight": "the candidate head (--head-weight > 0)", "next_weight": "the next-item head (--next-weight > 0)"}


def inherit_architecture(cfg: Any, explicit: set[str]) -> Any:
    """``cfg`` (a TrainConfig) with the architecture of ``cfg.init_from``; flags the user gave must agree with it."""
    folder = Path(cfg.init_from)
    if not (folder / "meta.json").is_file():
        raise ValueError(f"--init-from {folder}: not a LLaRA checkpoint (no meta.json)")
    saved = read_llara_meta(folder)["config"]
    clashes = {k: (getattr(cfg, k), saved[k]) for k in ARCHITECTURE
               if k in saved and k in explicit and getattr(cfg, k) != saved[k]}
    for k, what in HEADS.items():
        if (getattr(cfg, k) > 0) != (float(saved.get(k, 0.0)) > 0):
            clashes[k] = (f"{getattr(cfg, k)}", f"{saved.get(k, 0.0)}: {what} must exist in both or in neither")
    if clashes:
        raise ValueError(f"--init-from {folder}: these flags differ from the checkpoint's architecture "
                         f"(given, checkpoint's): {clashes}")
    return dataclasses.replace(cfg, **{k: saved[k] for k in ARCHITECTURE if k in saved})


def warm_start(cfg: Any, dataset, device: str | torch.device | None = None):
    """The model of ``cfg.init_from``, trainable, with ``cfg``'s loss weights; returns ``(model, record)`` where the
    record (saved in the new checkpoint's meta.json) says what the run started from."""
    model, meta, _ = load_llara(cfg.init_from, dataset=dataset, trainable=True, device=device)
    opts = model_options(dataclasses.asdict(cfg))
    model.weights = {**model.weights, **opts["weights"]}
    model.head_weight = opts["head_weight"]
    # the answer format is the prompt's, not the weights': a warm start may change it (title -> index)
    model.builder = model.builder.with_answer(opts["answer"])
    record = {"path": portable_path(cfg.init_from), "step": meta.get("step"),
              "adapter_sha256": meta.get("files", {}).get("adapter/adapter_model.safetensors")}
    return model, record
