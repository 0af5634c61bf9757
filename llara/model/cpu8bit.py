"""int8 weights on the CPU: fbgemm's int8 matmul, fast on every x86 CPU with AVX2, for inference.

On a CPU without native bf16, a 4-bit (nf4) layer costs bitsandbytes' dequantize kernel plus a float32 matmul at
every call: a profile of one demo prediction there spends ~55% of its time in float32 matmuls and ~28% dequantizing.
An int8 layer here holds its weight once, quantized per output row (symmetric, 8 bits) and packed for fbgemm, and
multiplies with activations quantized on the fly (``torch.ops.quantized.linear_dynamic``): no dequantize step and
an integer matmul about twice as fast as float32 on AVX2. It costs 1 byte per weight (nf4: ~0.56).

Gradients with respect to the *input* (what attributions need) go through the dequantized weight, so gradient x
input and integrated gradients work on an int8 model; the weights themselves are frozen (training refuses int8).

    python -m llara.inference --checkpoint checkpoints/llara/movielens-gru4rec-lang-drop-5k --precision int8 --history 1,2,3
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn


class _Int8MatmulFn(torch.autograd.Function):
    """``y = x W^T + b`` with fbgemm's int8 kernel forward; the input's gradient through the dequantized weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.int8_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight = ctx.layer.dequantized_weight().to(grad.dtype)  # (out, in)
        return grad @ weight, None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` with an int8 weight (one scale per output row) packed for fbgemm; float32 in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch marks its quantized tensor types deprecated (pytorch#184982) while fbgemm's packed linear still
            # takes them; torch is pinned (requirements.txt) and tests/test_llm.py fails the day they are gone
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qweight = torch.quantize_per_channel(weight, scales, zeros, axis=0, dtype=torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        # reduce_range: activations use 7 bits, so AVX2's 8-bit multiply-add (vpmaddubsw) cannot saturate
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed, True)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the int8 one stands for ``(out, in)`` (for gradients and tests)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _Int8MatmulFn.apply(x, self)
        return self.int8_forward(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm)"


# (base weights' key, layer name) -> the int8 layer built from them, while any loaded model still holds it: a second
# model over the same base weights (the demo's text-only model beside the hybrid one) takes these instead of its own
_SHARED: weakref.WeakValueDictionary[tuple[str, str], Int8Linear] = weakref.WeakValueDictionary()


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), share_key: str | None = None) -> int:
    """Replace every ``nn.Linear`` of ``model`` whose name does not end with one of ``skip`` by an
    :class:`Int8Linear`, in place; returns how many. The LM head stays as it is: it is tied to the token embeddings
    (one copy for both) and scores every vocabulary token, where int8 rounding would move the title likelihoods.

    ``share_key`` names the weights ``model`` was loaded from (a file and its version): layers already built from
    the same key by a model still alive are reused, so models over one base hold its int8 layers once (the demo's
    pair: 131 MB less after load, docs/performance.md). Layers are frozen, so sharing them changes no answer."""
    if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in torch.backends.quantized.supported_engines:
        raise RuntimeError("int8 needs torch's fbgemm/x86 quantized engine (x86 CPUs); use --precision nf4 or fp32 here")
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not name.endswith(skip)]
    for name, module in targets:
        owner, _, leaf = name.rpartition(".")
        layer = _SHARED.get((share_key, name)) if share_key else None
        if layer is None or (layer.in_features, layer.out_features) != (module.in_features, module.out_features):
            layer = Int8Linear(module)
            if share_key:
                _SHARED[(share_key, name)] = layer
        setattr(model.get_submodule(owner) if owner else model, leaf, layer)
    return len(targets)
