"""llara.model.projector: spec parsing, shapes, and the optional fixed output norm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from llara.model.projector import Projector, build_projector


@pytest.mark.parametrize("spec,n_linear", [("linear", 1), ("mlp1x_gelu", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_specs_build_the_right_layers(spec, n_linear):
    proj = build_projector(spec, 64, 32)
    linears = [m for m in proj.net if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear
    assert linears[0].in_features == 64 and all(l.out_features == 32 for l in linears)
    assert all(l.in_features == 32 for l in linears[1:])
    assert sum(isinstance(m, nn.GELU) for m in proj.net) == n_linear - 1


def test_paper_projector_is_linear_gelu_linear():
    proj = build_projector("mlp2x_gelu", 64, 576)
    kinds = [type(m) for m in proj.net]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear]
    assert (proj.net[0].in_features, proj.net[0].out_features, proj.net[2].out_features) == (64, 576, 576)


@pytest.mark.parametrize("spec", ["", "mlp", "mlp0x_gelu", "mlp2x_relu", "Linear", "mlpx_gelu", None])
def test_unknown_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="linear, mlp2x_gelu, mlpNx_gelu"):
        build_projector(spec, 8, 8)


def test_bad_dimensions_and_norm():
    with pytest.raises(ValueError):
        build_projector("linear", 0, 8)
    with pytest.raises(ValueError):
        build_projector("linear", 8, 8, target_norm=0.0)


def test_forward_shapes_and_input_check():
    proj = build_projector("mlp2x_gelu", 16, 24)
    assert proj(torch.randn(5, 16)).shape == (5, 24)  # (N, d_in) -> (N, d_out)
    assert proj(torch.randn(2, 3, 16)).shape == (2, 3, 24)  # leading dims pass through
    with pytest.raises(ValueError, match="last dim 16"):
        proj(torch.randn(5, 15))


def test_target_norm_rescales_every_row_and_keeps_direction():
    torch.manual_seed(0)
    proj = build_projector("mlp2x_gelu", 16, 24)
    x = torch.randn(7, 16)
    raw = proj(x)
    proj.target_norm = 3.0
    y = proj(x)
    assert torch.allclose(y.norm(dim=-1), torch.full((7,), 3.0), atol=1e-5)
    assert torch.allclose(torch.cosine_similarity(raw, y, dim=-1), torch.ones(7), atol=1e-5)


def test_target_norm_in_bf16_and_gradients_flow():
    proj = build_projector("mlp2x_gelu", 16, 24, target_norm=25.3).to(torch.bfloat16)
    x = torch.randn(4, 16)  # fp32 recommender table, bf16 projector: cast inside
    y = proj(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float().norm(dim=-1), torch.full((4,), 25.3), rtol=1e-2)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in proj.parameters())


def test_config_round_trip():
    proj = build_projector("mlp3x_gelu", 64, 32, target_norm=2.5)
    clone = build_projector(**proj.config())
    clone.load_state_dict(proj.state_dict())
    x = torch.randn(3, 64)
    assert isinstance(clone, Projector) and torch.equal(clone(x), proj(x))
    assert "target_norm=2.5" in repr(proj)
