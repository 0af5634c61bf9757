"""A saved LoRA adapter applied as a side pass beside frozen layers that peft cannot wrap (the int8 layers).

peft's LoRA wraps ``nn.Linear`` (and bitsandbytes' layers); an :class:`~llara.model.cpu8bit.Int8Linear` holds an
fbgemm-packed weight it does not know. Merging the update into the weights first (``loader.merged_base``) gives each
checkpoint its own int8 copy of every layer, so the demo's text-only and hybrid models hold two. Here the base layers
stay as they are, shareable between models loaded from the same base, and each model adds its own low-rank update
at every call, as peft does unmerged at inference (dropout off):

    y = base(x) + scaling * (x A^T) B^T        A: (r, in), B: (out, r), scaling = lora_alpha / r

Only the plain LoRA of a peft adapter folder is read (what ``python -m llara.train`` saves); any other kind (DoRA,
per-module ranks, extra trained modules, biases) is refused with the reason, never applied partly.

    python -m llara.bench --parts demo --precisions int8 --merge-ablation --repeats 5   # merged int8 against this
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

# adapter_config.json keys whose non-default values change what the update computes: refused, never ignored
_UNSUPPORTED: dict[str, object] = {
    "use_dora": False, "modules_to_save": None, "trainable_token_indices": None, "rank_pattern": {}, "alpha_pattern": {},
    "fan_in_fan_out": False, "layer_replication": None, "lora_bias": False, "target_parameters": None,
}


class SideLoRA(nn.Module):
    """``base(x) + (x @ down^T) @ up^T``: a frozen ``base`` layer and a low-rank update (``up`` holds the scaling)."""

    def __init__(self, base: nn.Module, down: torch.Tensor, up: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.down: torch.Tensor  # (r, in)
        self.up: torch.Tensor  # (out, r), scaling folded in
        self.register_buffer("down", down.float().contiguous())
        self.register_buffer("up", up.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (..., out)
        low = F.linear(x, self.down).reshape(-1, self.down.shape[0])  # (N, r)
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            return out + (low @ self.up.T).reshape(out.shape)
        # inference: accumulate into the base layer's fresh output, no second (N, out) tensor to allocate and add
        return out.reshape(-1, out.shape[-1]).addmm_(low, self.up.T).reshape(out.shape)

    def extra_repr(self) -> str:
        return f"rank={self.down.shape[0]}"


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter_config.json, {saved key: tensor})`` of a saved peft adapter, checked to be a plain LoRA (each
    layer's ``lora_A`` ``(r, in)`` and ``lora_B`` ``(out, r)``)."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: a {config.get('peft_type')} adapter; only LoRA can be applied beside int8 layers")
    odd = [key for key, plain in _UNSUPPORTED.items() if config.get(key) not in (plain, None)]
    if config.get("bias", "none") != "none":
        odd.append("bias")
    if odd:
        raise ValueError(f"{folder}: {', '.join(odd)} set in adapter_config.json; only a plain LoRA can be applied "
                         "beside int8 layers (load with --precision nf4 or fp32)")
    return config, load_file(str(folder / "adapter_model.safetensors"))


def attach_side_lora(model: nn.Module, folder: str | Path) -> int:
    """Wrap every layer of ``model`` that the adapter at ``folder`` updates in a :class:`SideLoRA`; returns how many.

    ``model`` is the bare transformers model (not peft-wrapped); the adapter's keys name its modules after peft's
    ``base_model.model.`` prefix. A key that names no module of ``model`` fails: a different base model."""
    config, tensors = read_adapter(folder)
    rank = int(config["r"])
    scaling = float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)
    prefix = "base_model.model."
    names = sorted({key[len(prefix):].rsplit(".lora_", 1)[0] for key in tensors if key.startswith(prefix)})
    if not names or len(names) * 2 != len(tensors):
        raise ValueError(f"{folder}: expected lora_A / lora_B weights under {prefix!r}, got {len(tensors)} tensors")
    wraps = []
    for name in names:  # every layer checked before any is wrapped: a refused adapter leaves the model as it was
        try:
            base = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"{folder}: the adapter updates {name}, which this base model does not have") from err
        down, up = tensors[f"{prefix}{name}.lora_A.weight"], tensors[f"{prefix}{name}.lora_B.weight"]
        shape = (getattr(base, "out_features", None), getattr(base, "in_features", None))
        if (up.shape[0], down.shape[1]) != shape or down.shape[0] != up.shape[1]:
            raise ValueError(f"{folder}: the update of {name} maps {down.shape[1]} -> {up.shape[0]} features, the "
                             f"layer {shape[1]} -> {shape[0]} (a different base model?)")
        wraps.append((name, base, down, up))
    for name, base, down, up in wraps:
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, SideLoRA(base, down, up * scaling))
    return len(wraps)
