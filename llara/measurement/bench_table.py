"""The table ``python -m llara.bench`` prints: every figure of a bench run (its JSON) beside its target, under the
CPU it came from.

    python -m llara.bench --parts demo --precisions nf4      # measures, then prints this table
"""
from __future__ import annotations

import torch

from .concurrency import format_load
from .cpu_paths import cpu_label
from .switching import format_switch

# Targets (2 cores, embedded model), printed beside the measurements.
TARGETS = {"predict_bf16_s": 1.0, "predict_nf4_s": 2.0, "nf4_rss_gb": 1.0, "vs_llamacpp": 2.0, "rank_cache_speedup": 3.0}


def _ms(t: dict) -> str:
    return f"{t['p50'] * 1000:,.0f} / {t['p95'] * 1000:,.0f}"


def demo_column(d: dict) -> str:
    """A demo column's name: precision, the dtype it computed in, the CPU path where limited, merging."""
    machine = d.get("machine") or {}
    compute = machine.get("compute_dtype") if d["precision"] not in ("fp32", "int8") else None
    return (d["precision"] + (f", {compute} compute" if compute else "") + (", AVX2 limit" if machine.get("isa_limit") else "")
            + ("" if d.get("merged", True) else ", LoRA unmerged"))


def format_table(res: dict) -> str:
    machine = res.get("machine", {})
    lines = [f"CPU: {cpu_label(machine)}" if machine.get("cpu") else "CPU: not recorded",
             f"torch {machine.get('torch', torch.__version__)}, {machine.get('device', 'cpu')}, {machine.get('threads', '?')} "
             "threads; latency cells are p50 / p95 in ms", ""]
    demo = res.get("demo", [])
    if demo:
        names = [demo_column(d) for d in demo]
        lines += ["| demo path | " + " | ".join(names) + " | target |", "|---" * (len(demo) + 2) + "|"]
        add = lambda name, vals, target="": lines.append(f"| {name} | " + " | ".join(vals) + f" | {target} |")  # noqa: E731
        add("cold start (s, checkpoint load incl. merged-weights cache)", [f"{d['cold_start_s']:.1f}" for d in demo], "≤ 30 s")
        add("resident memory after load (MB)", [f"{d['rss_after_load_mb']:,.0f}" for d in demo], "nf4 ≤ 1,000")
        add("peak memory over the run (MB)", [f"{d['peak_rss_mb']:,.0f}" for d in demo])
        if all("matmul" in d for d in demo):  # shows that a path's ISA limit took effect
            add("bf16 / fp32 time of one matmul in that process", [f"{d['matmul']['bf16_over_fp32']:.1f}x" for d in demo])
        if any(d.get("gpu_peak_mb") is not None for d in demo):
            add("GPU memory in tensors after load / peak (MB)",
                [f"{d['gpu_mb_after_load']:,.0f} / {d['gpu_peak_mb']:,.0f}" for d in demo])
        for key in demo[0]["latency"]:
            target = ""
            if key.startswith("full demo predict"):
                target = "bf16 ≤ 1,000, nf4 ≤ 2,000 (p50)"
            add(key, [_ms(d["latency"][key]) if key in d["latency"] else "–" for d in demo], target)
        for d in demo:
            lat = d["latency"]
            speed = lat["hybrid rank, 20 independent passes"]["p50"] / lat["hybrid rank"]["p50"]
            lines.append(f"\n{demo_column(d)}: rank with shared-prompt KV cache is {speed:.1f}x faster than 20 independent "
                         f"passes (target ≥ {TARGETS['rank_cache_speedup']:.0f}x)")
    train = res.get("train", [])
    if train:
        lines += ["", "| training (batch 4, fwd+bwd+step) | samples/s | step p50 / p95 (ms) | peak RSS (MB) |", "|---|---|---|---|"]
        for t in train:
            lines.append(f"| {t['precision']}, {t.get('compute_dtype', '?')} compute, gradient checkpointing {'on' if t['gradient_checkpointing'] else 'off'} | "
                         f"{t['samples_per_s']:.2f} | {_ms(t['step'])} | {t['peak_rss_mb']:,.0f}"
                         + (f" (GPU {t['gpu_peak_mb']:,.0f})" if t.get("gpu_peak_mb") is not None else "") + " |")
    recipes = res.get("recipes", [])
    if recipes:
        phases = list(recipes[0]["rss_mb"])
        lines += ["", "| training recipe (bf16, batch 8, fresh process) | tokens / prompt | samples/s | step p50 (ms) | "
                  + " | ".join(f"RSS {p} (MB)" for p in phases) + " |", "|---" * (4 + len(phases)) + "|"]
        for r in recipes:
            lines.append(f"| {r['recipe']}: {r['what']} | {r['tokens_per_prompt']:.0f} | {r['samples_per_s']:.2f} | "
                         f"{r['step']['p50'] * 1000:,.0f} | " + " | ".join(f"{r['rss_mb'][p]:,.0f}" for p in phases) + " |")
    lines += format_load(res.get("load") or [], res.get("mixed"), res.get("app"))
    lines += format_switch(res.get("switch"))
    ref = res.get("llamacpp")
    if ref:
        lines.append("")
        if "skipped" in ref:
            lines.append(f"llama.cpp reference: skipped: {ref['skipped']}")
        else:
            ours = res.get("forward", {})
            lines.append(f"llama.cpp ({ref['quant']}) prompt processing of {ref['prompt_tokens']} tokens: {_ms(ref['prefill'])} ms; "
                         f"prompt + 16 tokens: {_ms(ref['prompt+16 tokens'])} ms")
            if ours:
                per_token = (ours["forward"]["p50"] / ours["prompt_tokens"]) / (ref["prefill"]["p50"] / ref["prompt_tokens"])
                lines.append(f"ours ({ours['precision']}, merged, {ours['prompt_tokens']} tokens incl. <PH> markers) one forward pass: "
                             f"{_ms(ours['forward'])} ms = {per_token:.2f}x llama.cpp's time per prompt token "
                             f"(target ≤ {TARGETS['vs_llamacpp']:.0f}x)")
    return "\n".join(lines)
