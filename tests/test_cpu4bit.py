"""The 4-bit CPU path (llara/model/cpu4bit.py): both kernels give the same answer, gradients still flow, weights leave the
mapped file, and the GGUF conversion parses its file once."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from llara.model import cpu4bit

bnb = pytest.importorskip("bitsandbytes")


def nf4_layer(out_features: int = 64, in_features: int = 128, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(out_features, in_features, dtype=torch.bfloat16) * 0.1,
                                     requires_grad=False, quant_type="nf4", compress_statistics=False)
    layer.bias = torch.nn.Parameter(torch.randn(out_features, dtype=torch.bfloat16) * 0.1, requires_grad=False)
    return layer.to("cpu").eval()


def dequantized_reference(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    return torch.nn.functional.linear(x.to(torch.bfloat16), weight, layer.bias).float()


@pytest.mark.parametrize("rows", [1, cpu4bit.GEMV_ROWS, cpu4bit.GEMV_ROWS + 1, 200])
def test_both_kernels_match_the_dequantized_weights(rows):
    layer = nf4_layer()
    assert cpu4bit.prefer_dequantized_matmul(layer) == 1
    x = torch.randn(rows, 128, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x).float()
    ref = dequantized_reference(layer, x)
    assert out.shape == (rows, 64)
    # bf16 accumulation order differs between the kernels: a few bf16 ulps at these magnitudes
    assert torch.allclose(out, ref, atol=0.05, rtol=0.02), (out - ref).abs().max()


def test_layer_weight_keeps_the_standard_layout_after_inference():
    """bitsandbytes would repack the weight itself at the first no-grad call (and then have no autograd)."""
    layer = nf4_layer()
    cpu4bit.prefer_dequantized_matmul(layer)
    with torch.inference_mode():
        layer(torch.randn(3, 128, dtype=torch.bfloat16))
        layer(torch.randn(300, 128, dtype=torch.bfloat16))
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_gradients_flow_through_a_patched_layer():
    layer = nf4_layer()
    cpu4bit.prefer_dequantized_matmul(layer)
    with torch.inference_mode():
        layer(torch.randn(2, 128, dtype=torch.bfloat16))  # an earlier no-grad call must not break autograd later
    x = torch.randn(4, 128, dtype=torch.bfloat16, requires_grad=True)
    layer(x).float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fused_kernel_is_used_for_few_rows_only(monkeypatch):
    layer = nf4_layer()
    cpu4bit.prefer_dequantized_matmul(layer)
    if not layer.llara_pack:
        pytest.skip("this CPU has no fused 4-bit kernel in bitsandbytes (AVX512-BF16)")
    with torch.inference_mode():
        layer(torch.randn(cpu4bit.GEMV_ROWS + 5, 128, dtype=torch.bfloat16))
    assert layer.llara_packed is None  # prompts only so far: no packed copy held
    calls = []
    real = bnb.matmul_4bit
    monkeypatch.setattr(bnb, "matmul_4bit", lambda *a, **k: calls.append(k["quant_state"]) or real(*a, **k))
    with torch.inference_mode():
        layer(torch.randn(2, 128, dtype=torch.bfloat16))
        layer(torch.randn(cpu4bit.GEMV_ROWS + 5, 128, dtype=torch.bfloat16))
    assert [getattr(state, "packing_format_for_cpu", False) for state in calls] == [True, False]


def test_a_layer_the_packer_cannot_take_stays_on_the_dequantize_path():
    layer = nf4_layer(in_features=32)  # fewer inputs than one 64-value quantization block
    assert cpu4bit.prefer_dequantized_matmul(layer) == 1
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(layer(x).float(), dequantized_reference(layer, x), atol=0.05, rtol=0.02)
    assert layer.llara_packed is None and not layer.llara_pack


def test_dense_models_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    forward = model[0].forward
    assert cpu4bit.prefer_dequantized_matmul(model) == 0
    assert model[0].forward == forward


def test_detach_from_file_releases_the_mapped_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"embed": torch.randn(256, 64), "norm": torch.ones(64)}, str(path))
    model = torch.nn.Module()
    tensors = load_file(str(path))  # mmap-backed views
    model.embed = torch.nn.Parameter(tensors.pop("embed"), requires_grad=False)
    model.tied = model.embed  # a tied weight: the same Parameter object
    model.register_buffer("norm", tensors.pop("norm"))
    before = model.embed.data_ptr()
    copied = cpu4bit.detach_from_file(model)
    assert copied == (256 * 64 + 64) * 4
    assert model.embed.data_ptr() != before and model.tied is model.embed
    del tensors
    import gc

    gc.collect()
    maps = open("/proc/self/maps").read() if __import__("os").path.exists("/proc/self/maps") else ""
    assert str(path) not in maps


def test_gguf_is_parsed_once_inside_the_block(monkeypatch):
    gguf = pytest.importorskip("gguf")
    from llara.model.gguf_convert import gguf_parsed_once

    made = []

    class Reader:
        def __init__(self, path):
            made.append(path)

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    with gguf_parsed_once():
        first, second = gguf.GGUFReader("a.gguf"), gguf.GGUFReader("a.gguf")
        other = gguf.GGUFReader("b.gguf")
        assert first is second and other is not first
        assert gguf.get_tensor_name_map is not None
    assert made == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is Reader  # restored afterwards


def test_the_shared_reader_reads_a_real_gguf_like_gguf_does_without_memmap_slices(tmp_path):
    """A small GGUF with a vocabulary array and a tensor: the reader inside the block gives the same fields and
    tensor bytes as gguf's own reader, over a plain array (the memmap's per-slice bookkeeping is what it avoids)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from llara.model.gguf_convert import gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_uint32("llama.context_length", 64)
    writer.add_tensor("token_embd.weight", np.arange(24, dtype=np.float32).reshape(4, 6))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    plain = gguf.GGUFReader(str(path))
    with gguf_parsed_once():
        shared = gguf.GGUFReader(str(path))
    assert type(shared.data) is np.ndarray and isinstance(plain.data, np.memmap)
    assert list(shared.fields) == list(plain.fields)
    for name, field in plain.fields.items():
        assert all(np.array_equal(a, b) for a, b in zip(field.parts, shared.fields[name].parts)), name
    tokens = shared.fields["tokenizer.ggml.tokens"]
    assert bytes(tokens.parts[tokens.data[-1]]).decode() == "tok299"
    assert np.array_equal(shared.tensors[0].data, plain.tensors[0].data)
    with pytest.raises(ValueError, match="magic"):  # a file that is not GGUF still gets gguf's own error
        (tmp_path / "bad.gguf").write_bytes(b"nope" * 8)
        with gguf_parsed_once():
            gguf.GGUFReader(str(tmp_path / "bad.gguf"))


def test_the_tensor_free_gguf_parse_runs_once_and_each_caller_gets_its_own_copy(monkeypatch):
    pytest.importorskip("gguf")
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    from llara.model.gguf_convert import gguf_parsed_once

    calls = []

    def fake(path, return_tensors=False, model_to_load=None, torch_dtype=None):
        calls.append((path, return_tensors))
        return {"config": {"vocab": ["a", "b"]}, "tensors": return_tensors}

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", fake)
    with gguf_parsed_once():
        first = hf_gguf.load_gguf_checkpoint("m.gguf", return_tensors=False)
        first["config"]["vocab"].append("mutated by a caller")
        second = hf_gguf.load_gguf_checkpoint("m.gguf")
        weights = hf_gguf.load_gguf_checkpoint("m.gguf", return_tensors=True, model_to_load=object())
    assert second == {"config": {"vocab": ["a", "b"]}, "tensors": False}  # a copy: the first caller's edit is not seen
    assert weights["tensors"] is True
    assert calls == [("m.gguf", False), ("m.gguf", True)]  # the weights call always goes through
    assert hf_gguf.load_gguf_checkpoint is fake  # restored afterwards


def test_kernel_table_cli_refuses_bad_rows(capsys):
    with pytest.raises(SystemExit):
        cpu4bit.main(["--rows", "a,b"])
    assert "--rows must be comma-separated whole numbers" in capsys.readouterr().err


def test_bitsandbytes_is_imported_without_compiling_and_compile_restored():
    """The import shim hands back the module and leaves ``torch.compile`` as it was, even when already imported."""
    compile_ = torch.compile
    assert cpu4bit.import_bitsandbytes() is bnb
    assert torch.compile is compile_


def test_a_fresh_process_imports_bitsandbytes_without_the_compiler():
    """Loading peft after the shim never pulls in torch's inductor compiler (what bitsandbytes' compile wrappers
    would import), bitsandbytes' fallback kernels are the plain functions, and its start-up warning is not printed."""
    import subprocess
    import sys

    code = ("import sys, torch; from llara.model.cpu4bit import import_bitsandbytes; import_bitsandbytes(); import peft; "
            "from bitsandbytes.backends.default import ops; "
            "print('torch._inductor.compile_fx' in sys.modules, type(ops._dequantize_4bit_compute).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False", "function"], out.stdout + out.stderr
    assert "kernels" not in out.stderr, out.stderr  # its warning about an optional kernel package is filtered
