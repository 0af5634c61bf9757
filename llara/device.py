"""Where the model runs: one home for resolving ``--device``, the flag itself, and bf16 autocast.

Every entry point (``python -m llara.<cmd>`` and ``app.py``) adds the same ``--device`` flag with
:func:`add_device_arg` and turns it into a ``torch.device`` with :func:`resolve_device`. The model is loaded onto that
device and every tensor a forward pass, a decoder or an attribution creates follows the model's device
(``LLaRA.device``), so nothing in between has to move batches.

``auto`` means CUDA when a CUDA device is visible, else the CPU. Apple's MPS is used only when asked for by name:
the default precision of the demo is nf4, which bitsandbytes does not offer on MPS.

Autocast: on CUDA with bf16 support the model runs its forward passes under ``torch.autocast(dtype=bfloat16)``; on
every other device nothing is autocast, so CPU results stay exactly what they were.

Compute dtype (``--compute-dtype auto|bf16|fp32``, added beside ``--device``; also ``$LLARA_COMPUTE_DTYPE``): the
dtype the base LLM's matmuls run in. A CPU without native bf16 (no AVX512-BF16 or AMX, or an ISA limit set with
``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA``) emulates a bf16 matmul 5-8x slower than float32, so ``auto`` gives
such a CPU float32: nf4 weights stay 4-bit and are dequantized to float32, bf16 weights are upcast once at load
(exact). Everywhere else ``auto`` keeps bf16 for bf16 and nf4 weights, as before.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = ("where the model runs: auto (CUDA when a CUDA device is visible, else the CPU), cpu, cuda (or cuda:N "
               "for the N-th GPU) or mps (Apple GPU; not with nf4)")

COMPUTE_DTYPES: tuple[str, ...] = ("auto", "bf16", "fp32")
COMPUTE_ENV = "LLARA_COMPUTE_DTYPE"  # the flag writes it, so child processes (a bench's fresh runs) inherit it
# oneDNN ISA limits that leave out its bf16 kernels (oneDNN's names; AVX512_CORE_BF16 and the AMX ones keep them)
_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}

F = TypeVar("F", bound=Callable)


def _check_spec(spec: str) -> str:
    """``spec`` if it names a device kind we support (``cuda:N`` included); ValueError otherwise."""
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_CHOICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {spec!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    return spec


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``spec`` names, checked to exist on this machine.

    ``None`` and ``"auto"``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. ``"cuda"`` / ``"cuda:N"`` and
    ``"mps"`` raise ValueError with the reason when that device is not usable here (a CPU-only torch build, no GPU
    visible, an index past the last GPU), so a command fails at its start rather than at the first tensor.
    """
    if isinstance(spec, torch.device):  # already a device (e.g. accelerate's "cpu:0" for a CPU process): check it
        device, spec = spec, str(spec)
    else:
        spec = "auto" if spec is None else _check_spec(str(spec).strip().lower())
        if spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build (install a CUDA build of torch)" if torch.version.cuda is None
                   else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise ValueError(f"--device {spec}: CUDA is not available: {why}; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {spec}: Apple's MPS backend is not available on this machine; use --device cpu or auto")
    return device


def accelerator_for(spec: str = "auto", **kwargs) -> Accelerator:
    """An ``accelerate.Accelerator`` whose process device is the one ``--device`` names (``kwargs`` go to it).

    Under ``accelerate launch`` every process takes its own GPU (``cuda`` then means "this process's GPU"), and
    ``ACCELERATE_USE_CPU=1`` or an accelerate config may keep the processes on the CPU: with ``auto`` that decides;
    a device named explicitly that accelerate does not give is an error rather than a silent CPU run.
    """
    from accelerate import Accelerator

    device = resolve_device(spec)
    if device.type == "cuda" and device.index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--device {spec} names one GPU, but under accelerate launch every process takes its own: "
                             "use --device cuda (or auto)")
        torch.cuda.set_device(device)  # a single process: "cuda" below then means this GPU
    if spec != "auto" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from accelerate.state import AcceleratorState, PartialState

        if PartialState._shared_state and PartialState().device.type != device.type:
            # accelerate keeps one state per process: a process that already ran on another device (a test session,
            # a notebook) starts it afresh for the device asked for
            AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=device.type == "cpu", **kwargs)
    if spec != "auto" and accelerator.device.type != device.type:
        raise ValueError(f"--device {spec} was asked for, but accelerate runs this process on {accelerator.device} "
                         "(ACCELERATE_USE_CPU, or an accelerate config that says so): drop one of them")
    return accelerator


def add_device_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add ``--device`` with the help text every command shares (syntax checked by argparse, availability by
    :func:`resolve_device` when the command starts)."""

    def device_type(text: str) -> str:
        try:
            return _check_spec(text.strip().lower())
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument("--device", type=device_type, default=default, metavar="{auto,cpu,cuda,mps}",
                        help=f"{DEVICE_HELP} (default: %(default)s)")
    add_compute_dtype_arg(parser)


def _compute_type(text: str) -> str:
    value = text.strip().lower()
    if value not in COMPUTE_DTYPES:
        raise argparse.ArgumentTypeError(f"unknown compute dtype {text!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
    return value


class _SetComputeDtype(argparse.Action):
    """``--compute-dtype``: stored on the namespace and in ``$LLARA_COMPUTE_DTYPE`` for everything this process (and
    any process it starts) loads."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        os.environ[COMPUTE_ENV] = str(values)


def add_compute_dtype_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--compute-dtype`` (see the module docstring); :func:`add_device_arg` adds it beside ``--device``."""
    parser.add_argument("--compute-dtype", type=_compute_type, action=_SetComputeDtype,
                        default=os.environ.get(COMPUTE_ENV, "auto"), metavar="{auto,bf16,fp32}",
                        help="dtype of the LLM's matmuls: auto (float32 on a CPU without native bf16, where bf16 is "
                             "emulated 5-8x slower; bf16 elsewhere), bf16 or fp32; nf4 weights stay 4-bit either way "
                             "(default: %(default)s, or $LLARA_COMPUTE_DTYPE)")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:  # not Linux
        pass
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs a bf16 matmul in hardware: CUDA GPUs with bf16 (Ampere and later); on the CPU,
    AVX512-BF16 or AMX that no ISA limit in the environment switches off. Apple silicon (no /proc/cpuinfo) counts as
    native for MPS and not for its CPU, whose bf16 matmul torch emulates."""
    device = torch.device(device)
    if device.type == "cuda":
        return autocast_supported(device)
    if device.type == "mps":
        return True
    if not _cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return False
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return aten not in {"default", "avx2"} and onednn not in _NO_BF16_ISAS


def compute_dtype(precision: str, device: torch.device | str = "cpu", spec: str | None = None) -> torch.dtype:
    """The dtype a ``precision`` model (bf16 / fp32 / nf4 weights) computes in on ``device``: ``spec`` (default
    ``$LLARA_COMPUTE_DTYPE`` or ``auto``) where given; with ``auto``, fp32 weights compute in fp32 and bf16 / nf4
    weights in bf16 where :func:`native_bf16`, else in fp32."""
    spec = _check_compute(spec if spec is not None else os.environ.get(COMPUTE_ENV, "auto"))
    if precision in ("fp32", "int8") or spec == "fp32":  # int8: the kernel takes and gives float32
        return torch.float32
    if spec == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else torch.float32


def serving_precision(spec: str, device: torch.device | str = "cpu") -> str:
    """The precision ``auto`` serves at on ``device`` (any other ``spec`` is returned as given): nf4 (4-bit) on a
    GPU and on a CPU with native bf16, where bitsandbytes' dequantize + bf16 matmul is fast; int8 (fbgemm, see
    llara.model.cpu8bit) on an x86 CPU without it, where a 4-bit layer pays a dequantize and a float32 matmul at every
    call (``python -m llara.bench --precisions nf4,int8`` measures both)."""
    if spec != "auto":
        return spec
    device = torch.device(device)
    engines = torch.backends.quantized.supported_engines
    if device.type == "cpu" and not native_bf16(device) and ("fbgemm" in engines or "x86" in engines):
        return "int8"
    return "nf4"


def _check_compute(spec: str) -> str:
    try:
        return _compute_type(spec)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{err} (from --compute-dtype or ${COMPUTE_ENV})") from None


def device_name(device: torch.device) -> str:
    """The device as benchmark tables name it: ``cuda:0 (NVIDIA H200, 140 GiB)``, ``mps`` or ``cpu``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously: a timer must not stop before them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions a device cannot run, with what to use instead: nf4 needs bitsandbytes, which has a CPU and a
    CUDA backend but none for Apple's MPS."""
    if precision == "nf4" and device.type == "mps":
        raise ValueError("nf4 (bitsandbytes 4-bit) is not supported on Apple's MPS: use --precision bf16 or fp32 with "
                         "--device mps, or keep nf4 with --device cpu")


def autocast_supported(device: torch.device) -> bool:
    """Whether the model's passes on ``device`` run under bf16 autocast: CUDA GPUs with bf16 in hardware (Ampere and
    later) only; older ones would emulate it, slower than float32."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` where :func:`autocast_supported`, a no-op context everywhere else."""
    if enabled and autocast_supported(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_method(method: F) -> F:
    """Decorator for methods of a module with a ``device`` property and a ``use_autocast`` flag: the call runs
    under :func:`autocast` of that device (so every decoder gets it, not only ``forward``)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with autocast(self.device, enabled=getattr(self, "use_autocast", True)):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def cpu_info() -> dict:
    """Which CPU a figure came from: its model name, torch's CPU capability, whether it runs bf16 natively
    (AVX512-BF16 or AMX) and any ISA limit set in the environment (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``),
    since a bf16 matmul is several times slower where it is emulated."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), name)
    except OSError:  # not Linux: the name platform gives is all there is
        pass
    return {"cpu": name, "cores": os.cpu_count(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16("cpu") if _cpu_flags() else None,
            "cpu_has_bf16": bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"}) if _cpu_flags() else None,
            "isa_limit": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "compute_dtype": str(compute_dtype("bf16", "cpu")).removeprefix("torch."),
            "threads": torch.get_num_threads()}
