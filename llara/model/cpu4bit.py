"""How a bitsandbytes nf4 model runs on the CPU: the matmul chosen by the number of rows, and weights off the file.

bitsandbytes (0.50) repacks every 4-bit weight on a CPU with AVX512-BF16 at the first inference call and then sends
*all* inputs through one fused kernel (``gemv_4bit``). That kernel is quick for a few rows (a token-by-token decode
step) but slow for a prompt: a batch of 16 demo prompts (~3,400 rows) took 4.7 s against 1.0 s for bitsandbytes'
own dequantize kernel followed by a bf16 matmul (oneDNN), which is how it treats prompts on a GPU. So each 4-bit
linear here keeps bitsandbytes' standard layout (dequantize + matmul, used for prompts and for anything that needs
gradients) and, where the fused kernel exists, a packed copy for calls of at most ``GEMV_ROWS`` rows (token-by-token
decoding), made at the first such call: it costs the 4-bit bytes once more (~50 MB for SmolLM2-135M), which a
process that only scores prompts (the demo's default decode) never pays.

Loading a 4-bit model from a bf16 folder also leaves the folder's safetensors file mapped: the unquantized tensors
(embeddings, norms) are zero-copy views of it, so every page read while quantizing stays resident (~200 MB per
model). :func:`detach_from_file` copies those few tensors so the mapping is released.

    python -m llara.cpu4bit --rows 1,8,32,64,256    # both kernels on one 576x1536 layer: where the crossover is
    python -m llara.bench --parts load --precisions nf4    # 20 clients at once, the demo's two nf4 models
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from bitsandbytes.functional import QuantState
    from bitsandbytes.nn import Params4bit

# bitsandbytes looks for an optional faster CPU 4-bit kernel on the Hugging Face Hub (the `kernels` package) and warns
# at every start when it is absent; its own CPU kernel then runs, which is what every figure here measures
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())

# calls with at most this many rows (tokens x batch) use the fused kernel; more rows: dequantize + bf16 matmul.
# (measured crossover ~30 rows for a 576x1536 layer on the 2-core AVX512-BF16 machine: python -m llara.cpu4bit)
GEMV_ROWS = 24


def import_bitsandbytes() -> ModuleType | None:
    """``import bitsandbytes`` without wrapping its pure-PyTorch fallback kernels in ``torch.compile``; None where
    it is not installed. Call it before anything imports bitsandbytes (peft does, on import).

    bitsandbytes decorates a few fallbacks (for devices without its native kernels) with ``torch.compile`` at
    import, which imports torch's inductor compiler into every process (time and resident memory). Its CPU and
    CUDA backends never call those fallbacks, and its own wrapper runs them uncompiled whenever compiling fails, so
    they get the uncompiled function directly. ``torch.compile`` is restored before this returns."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    compile_ = torch.compile
    # through the module's namespace: torch.compile is typed as its own overloads, which no stand-in matches
    vars(torch)["compile"] = _uncompiled
    try:
        import bitsandbytes
    except ImportError:  # no 4-bit model can exist without it
        return None
    finally:
        vars(torch)["compile"] = compile_
    return bitsandbytes


def _uncompiled(fn: Any = None, **_: Any) -> Any:
    """``torch.compile``'s stand-in while bitsandbytes imports: the function itself (or, called with options only,
    a decorator that returns its function)."""
    return fn if fn is not None else (lambda f: f)


class _PatchedLinear4bit(Protocol):
    """A bitsandbytes ``Linear4bit`` after :func:`prefer_dequantized_matmul`: a 4-bit weight, and the packed copy's
    state (whether to make one, and the copy once made)."""

    weight: Params4bit
    bias: torch.Tensor | None
    training: bool
    llara_pack: bool
    llara_packed: tuple[torch.Tensor, QuantState] | None

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


def _linear4bit_class():
    bnb = import_bitsandbytes()
    return None if bnb is None else bnb.nn.Linear4bit


def _packed_copy(module: _PatchedLinear4bit) -> tuple[torch.Tensor, QuantState] | None:
    """The fused kernel's layout of ``module``'s 4-bit weight, leaving the module's own weight and state untouched;
    None where bitsandbytes' private packer is gone or cannot take the layer's shape."""
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu
    except ImportError:
        return None
    state = module.weight.quant_state
    if state is None or getattr(state, "packing_format_for_cpu", False):
        return None
    out_features, in_features = state.shape
    if in_features % state.blocksize or out_features % 32:  # the packer's block sizes: such a layer stays unpacked
        return None
    return _convert_weight_packed_for_cpu(module.weight.data.clone(), copy.deepcopy(state))


def _forward(module: _PatchedLinear4bit, x: torch.Tensor) -> torch.Tensor:
    """``Linear4bit.forward`` with the kernel chosen by rows (the bound method of every patched layer). The packed
    copy is made at the first few-row call, so a process that only ever scores prompts never holds it."""
    rows = x.numel() // max(x.shape[-1], 1)
    if (module.llara_pack and rows <= GEMV_ROWS and x.device.type == "cpu" and not module.training
            and not (torch.is_grad_enabled() and x.requires_grad)):
        if module.llara_packed is None:
            module.llara_packed = _packed_copy(module)
            module.llara_pack = module.llara_packed is not None
        if module.llara_packed is not None:
            import bitsandbytes as bnb

            weight, state = module.llara_packed
            bias = None if module.bias is None else module.bias.to(torch.bfloat16)
            return bnb.matmul_4bit(x.to(torch.bfloat16), weight, bias=bias, quant_state=state).to(x.dtype)
    return type(module).forward(module, x)


def prefer_dequantized_matmul(model: torch.nn.Module, gemv_rows: bool = True) -> int:
    """Make every bitsandbytes 4-bit linear of ``model`` compute prompts as dequantize + bf16 matmul (see the
    module docstring); with ``gemv_rows``, calls of at most ``GEMV_ROWS`` rows keep the fused kernel through a
    packed copy. Returns the number of layers changed (0 for a model without 4-bit layers)."""
    cls = _linear4bit_class()
    if cls is None:
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, cls):
            continue
        # the packed copy is made on first use (see _forward); bitsandbytes' own flag says whether it can be
        module.llara_pack = bool(gemv_rows and getattr(module, "support_avx512bf16_for_cpu", False))
        module.llara_packed = None
        # bitsandbytes repacks (and then uses only the fused kernel) when this is true at a no-grad CPU call
        module.support_avx512bf16_for_cpu = False
        module.forward = _forward.__get__(module)
        changed += 1
    return changed


def detach_from_file(model: torch.nn.Module) -> int:
    """Copy every floating-point parameter and buffer of ``model`` into its own memory, so a safetensors file the
    loader mapped (and whose pages stay resident while anything views it) is released. Returns the bytes copied.
    Tied weights stay tied: the shared Parameter object gets the new storage once. Buffers are replaced in their
    module (a plain tensor's Python object can keep the mapping alive through ``.data =``)."""
    copied = 0
    seen: set[int] = set()
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.device.type == "cpu" and id(parameter) not in seen:
            seen.add(id(parameter))
            parameter.data = parameter.data.clone()
            copied += parameter.numel() * parameter.element_size()
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.device.type == "cpu":
                module._buffers[name] = buffer.clone()
                copied += buffer.numel() * buffer.element_size()
    return copied


def kernel_table(rows: list[int], repeats: int = 50, shape: tuple[int, int] = (1536, 576)) -> list[dict]:
    """Milliseconds per call of one random nf4 layer (``shape`` = out x in features) through the fused kernel and
    through dequantize + bf16 matmul, for each number of input rows (same process, so the ratio is the comparison)."""
    global GEMV_ROWS
    bnb = import_bitsandbytes()
    if bnb is None:
        raise RuntimeError("bitsandbytes is not installed: pip install -r requirements.txt")

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(shape[1], shape[0], bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(shape, dtype=torch.bfloat16) * 0.02, requires_grad=False,
                                     quant_type="nf4", compress_statistics=False)
    layer = layer.to("cpu").eval()
    if prefer_dequantized_matmul(layer) and not layer.llara_pack:
        raise RuntimeError("this CPU has no fused 4-bit kernel in bitsandbytes (it needs AVX512-BF16): nothing to compare")
    saved, table = GEMV_ROWS, []
    try:
        with torch.inference_mode():
            for n in rows:
                x = torch.randn(n, shape[1], dtype=torch.bfloat16)
                timing = {}
                for name, limit in (("fused_ms", n), ("dequantize_ms", n - 1)):
                    GEMV_ROWS = limit
                    layer(x)  # warm-up
                    started = time.perf_counter()
                    for _ in range(repeats):
                        layer(x)
                    timing[name] = (time.perf_counter() - started) / repeats * 1e3
                table.append({"rows": n, **timing})
    finally:
        GEMV_ROWS = saved
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.cpu4bit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", default="1,8,16,32,64,256", help="comma-separated numbers of input rows to time")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per cell (after one warm-up call)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    try:
        rows = [int(r) for r in args.rows.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rows must be comma-separated whole numbers, got {args.rows!r}")
    if not rows or min(rows) < 1 or args.repeats < 1:
        parser.error("--rows needs numbers >= 1 and --repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        table = kernel_table(rows, args.repeats)
    except (ImportError, RuntimeError) as err:
        print(f"error: {err}")
        return 2
    print(f"one nf4 576->1536 layer, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"the demo uses the fused kernel up to {GEMV_ROWS} rows")
    print("| rows | fused kernel (ms) | dequantize + bf16 matmul (ms) |\n|---|---|---|")
    for row in table:
        print(f"| {row['rows']} | {row['fused_ms']:.3f} | {row['dequantize_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
