"""The projector: maps a frozen recommender's item embedding (d_rec, 64 in the paper) into the LLM's token-embedding
space (d_llm), where it replaces the ``<HistoryEmb>`` / ``<CansEmb>`` placeholder rows of ``inputs_embeds``.

Built from a string spec as in LLaVA, so a checkpoint's config can rebuild it: ``linear``, or ``mlpNx_gelu`` =
Linear(d_in -> d_out) followed by N-1 times [GELU, Linear(d_out -> d_out)]; the paper's projector is ``mlp2x_gelu``.
"""
from __future__ import annotations

import re
from typing import cast

import torch
from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")
PROJECTOR_SPECS = ("linear", "mlp2x_gelu", "mlpNx_gelu (N >= 1)")


def _parse_depth(spec: str) -> int:
    """Number of Linear layers a spec asks for; ValueError listing the valid forms otherwise."""
    if spec == "linear":
        return 1
    match = _MLP.match(spec) if isinstance(spec, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector spec {spec!r}; valid forms: {', '.join(PROJECTOR_SPECS)}")
    return int(match.group(1))


class Projector(nn.Module):
    """``forward(x: (N, d_in)) -> (N, d_out)`` (any leading dims work).

    ``target_norm``: when set, every output vector is rescaled to exactly this L2 norm. Token vectors of a small LLM
    have a typical norm (SmolLM2 ~3.2, Gemma-3 after its sqrt(hidden) scale ~25; see ``llm.token_embedding_norm``);
    an MLP's output norm is set by its init and the recommender's embedding scale instead, and can drift during
    training. Fixing the norm leaves the projector to learn only the direction. It is a plain attribute (not
    a parameter): save it with the spec in the checkpoint config, see :meth:`config`.
    """

    def __init__(self, spec: str, d_in: int, d_out: int, target_norm: float | None = None, eps: float = 1e-6):
        super().__init__()
        depth = _parse_depth(spec)
        if d_in <= 0 or d_out <= 0:
            raise ValueError(f"projector dimensions must be positive, got d_in={d_in}, d_out={d_out}")
        if target_norm is not None and not target_norm > 0:
            raise ValueError(f"target_norm must be positive or None, got {target_norm}")
        layers: list[nn.Module] = [nn.Linear(d_in, d_out)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(d_out, d_out)]
        self.net = nn.Sequential(*layers)
        self.spec, self.d_in, self.d_out = spec, d_in, d_out
        self.target_norm = None if target_norm is None else float(target_norm)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"projector expects inputs with last dim {self.d_in}, got shape {tuple(x.shape)}")
        # match the projector's dtype (the recommender table may be fp32 while the projector runs in bf16)
        first = cast(nn.Linear, self.net[0])  # __init__ builds the net from Linear layers
        y = self.net(x.to(first.weight.dtype))  # (N, d_in) -> (N, d_out)
        if self.target_norm is not None:
            # compute the norm in fp32: in bf16 the sum of squares over d_out=576+ dims loses precision
            norm = y.float().norm(dim=-1, keepdim=True).clamp_min(self.eps)  # (N, 1)
            y = (y.float() * (self.target_norm / norm)).to(y.dtype)  # (N, d_out), each row of norm target_norm
        return y

    def config(self) -> dict:
        """What :func:`build_projector` needs to rebuild this module (store it beside the weights)."""
        return {"spec": self.spec, "d_in": self.d_in, "d_out": self.d_out, "target_norm": self.target_norm}

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, target_norm={self.target_norm}"


def build_projector(spec: str, d_in: int, d_out: int, target_norm: float | None = None) -> Projector:
    """Projector from a spec string (``linear``, ``mlp2x_gelu``, ``mlpNx_gelu``); see :class:`Projector`."""
    return Projector(spec, d_in, d_out, target_norm=target_norm)
