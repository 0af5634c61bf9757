"""Which CPU path a figure came from, and the AVX2-only path reproduced on any x86 CPU.

A CPU with AVX512-BF16 or AMX runs a bf16 matmul natively; an AVX2-only CPU (most laptops, many cloud VMs and free
CPU Spaces) emulates it several times slower than float32. torch and oneDNN can be held to AVX2 on a newer CPU by
two environment variables read when they start (so only a fresh process gets them):

- ``ATEN_CPU_CAPABILITY=avx2``: torch's own vectorised kernels stop at AVX2;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN, which runs torch's bf16 and fp32 matmuls, stops at AVX2 (no bf16 kernels).

This module runs one small matmul in bf16 and in float32 in a fresh process per path, which shows whether a limit
took effect (under it, bf16 turns several times slower than float32, as on a real AVX2 CPU):

    python -m llara.cpu_paths                     # the native path and the AVX2 limit, bf16 vs float32
    python -m llara.bench --cpu-paths native,avx2 --compute-dtypes auto,bf16 --parts demo --precisions nf4

Every figure of ``python -m llara.bench`` records :func:`llara.device.cpu_info` of the process that measured it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from ..device import cpu_info

# environment of each path; "native" adds nothing (whatever the CPU has)
CPU_PATHS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def path_env(path: str, compute: str | None = None) -> dict[str, str]:
    """The environment of a child process on ``path`` (a key of :data:`CPU_PATHS`), with ``compute`` as its
    ``LLARA_COMPUTE_DTYPE`` where given. ValueError for an unknown path."""
    if path not in CPU_PATHS:
        raise ValueError(f"unknown CPU path {path!r}; choose from {', '.join(CPU_PATHS)}")
    env = {**os.environ, **CPU_PATHS[path]}
    if compute is not None:
        env["LLARA_COMPUTE_DTYPE"] = compute
    return env


def redundant_path(path: str, info: dict | None = None) -> bool:
    """Whether ``path`` would measure what ``native`` does here: the AVX2 limit on a CPU that has no more than AVX2
    and no native bf16 (the native path already is the AVX2 path)."""
    info = info or cpu_info()
    return path == "avx2" and not info.get("cpu_has_bf16") and str(info.get("torch_capability", "")).upper() == "AVX2"


def matmul_probe(rows: int = 256, shape: tuple[int, int] = (1536, 576), repeats: int = 20) -> dict:
    """Milliseconds (median) of one ``rows x in`` by ``in x out`` matmul (a SmolLM2-135M MLP layer) in float32 and
    in bf16 in this process, and their ratio: above ~2 the bf16 matmul is emulated."""
    torch.manual_seed(0)
    x, w = torch.randn(rows, shape[1]), torch.randn(shape)
    out = {}
    for name, dtype in (("fp32_ms", torch.float32), ("bf16_ms", torch.bfloat16)):
        a, b = x.to(dtype), w.to(dtype)
        a @ b.T  # warm-up: kernel selection and allocation
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b.T
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times) * 1e3
    out["bf16_over_fp32"] = out["bf16_ms"] / out["fp32_ms"]
    return out


def cpu_label(info: dict) -> str:
    """One line naming the CPU path of a figure: ``AMD EPYC, 2 cores, torch AVX2, no native bf16 (compute
    float32)``, with any ISA limit."""
    native = {True: "native bf16", False: "no native bf16", None: "bf16 support unknown"}[info.get("native_bf16")]
    limit = ", limited by " + " ".join(f"{k}={v}" for k, v in info["isa_limit"].items()) if info.get("isa_limit") else ""
    return (f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, torch {info.get('torch_capability', '?')}{limit}, "
            f"{native} (compute {info.get('compute_dtype', '?')})")


def probe_path(path: str, threads: int = 0) -> dict:
    """:func:`matmul_probe` and :func:`llara.device.cpu_info` in a fresh interpreter on ``path``."""
    cmd = [sys.executable, "-m", "llara.cpu_paths", "--child", "--threads", str(threads)]
    done = subprocess.run(cmd, env=path_env(path), check=True, capture_output=True, text=True)
    return {"path": path, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.cpu_paths", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--paths", default="native,avx2", help=f"comma-separated CPU paths: {', '.join(CPU_PATHS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each probe (0: torch's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps({"machine": cpu_info(), **matmul_probe()}))
        return 0
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in CPU_PATHS]
    if unknown or not paths:
        parser.error(f"unknown CPU path(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CPU_PATHS)}")
    print("| CPU path | what torch runs | fp32 matmul (ms) | bf16 matmul (ms) | bf16 / fp32 |\n|---|---|---|---|---|")
    for path in paths:
        row = probe_path(path, args.threads)
        print(f"| {path} | {cpu_label(row['machine'])} | {row['fp32_ms']:.2f} | {row['bf16_ms']:.2f} | "
              f"{row['bf16_over_fp32']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
