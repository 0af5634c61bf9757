"""Speed of the embedded model on this machine: training throughput and seconds per answer for each decode mode.

    python -m llara.bench                          # bf16 and nf4, 3 timed repeats each
    python -m llara.bench --precisions bf16 --repeats 5 --json docs/bench.json

Every figure is the median of ``--repeats`` timed runs after one warm-up; comparisons (nf4 vs bf16, cached vs
uncached ``rank``) are ratios taken in the same run, because timings on shared machines drift. The model is a
fresh LLaRA (LoRA r=8 on every projection, untrained): speed does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .constants import RECOMMENDER_DIR
from .checkpoint import write_json
from .data import load_dataset
from .model import build_llara

DEFAULT_REC = RECOMMENDER_DIR / "movielens" / "sasrec"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_precision(precision: str, ds, rec: str, repeats: int, base_model: str) -> dict:
    started = time.perf_counter()
    model = build_llara(ds, rec, base_model=base_model, precision=precision, lora={"r": 8, "alpha": 32, "dropout": 0.1})
    load_s = time.perf_counter() - started
    rng = random.Random(0)
    samples = ds.test[:4]
    cands = ds.candidates("test", seed=0)[:4]
    prompts = [model.builder.build(s.history, c, hybrid=True, target=s.target, rng=rng) for s, c in zip(samples, cands)]
    # training: forward + backward on a batch of 2 prompts (the optimizer step is negligible at LoRA size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def train_step() -> None:
        loss = model.loss(prompts[:2])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s = _median_time(train_step, repeats)
    model.eval()
    p = prompts[0]
    infer = {
        "generate": _median_time(lambda: model.generate([p], max_new_tokens=32), repeats),
        "constrained": _median_time(lambda: model.constrained(p), repeats),
        "rank (shared-prompt KV cache)": _median_time(lambda: model.rank(p), repeats),
        "rank (20 independent passes)": _median_time(lambda: model.rank_uncached(p), max(1, repeats // 2)),
    }
    return {
        "precision": precision,
        "load_s": load_s,
        "prompt_tokens": len(p.input_ids),
        "train_samples_per_s": 2 / step_s,
        "train_step_s": step_s,
        "seconds_per_answer": infer,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def format_table(results: list[dict]) -> str:
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| measure | " + " | ".join(r["precision"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    row = lambda name, vals: lines.append(f"| {name} | " + " | ".join(vals) + " |")  # noqa: E731
    row("model load (s)", [f"{r['load_s']:.1f}" for r in results])
    row("prompt length (tokens)", [str(r["prompt_tokens"]) for r in results])
    row("training samples/s (batch 2, fwd+bwd)", [f"{r['train_samples_per_s']:.2f}" for r in results])
    for key in results[0]["seconds_per_answer"]:
        row(f"{key} (s/sample)", [f"{r['seconds_per_answer'][key]:.2f}" for r in results])
    row("rank speed-up from cache reuse", [f"{r['seconds_per_answer']['rank (20 independent passes)'] / r['seconds_per_answer']['rank (shared-prompt KV cache)']:.1f}x" for r in results])
    row("peak RSS so far (MB)", [f"{r['peak_rss_mb']:.0f}" for r in results])
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            lines.append(f"\n{r['precision']} / {base['precision']} training step time: {r['train_step_s'] / base['train_step_s']:.2f}x; "
                         f"rank time: {r['seconds_per_answer']['rank (shared-prompt KV cache)'] / base['seconds_per_answer']['rank (shared-prompt KV cache)']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="bf16,nf4", help="comma-separated precisions to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; the median is reported (default: %(default)s)")
    parser.add_argument("--base-model", default="smollm2-135m", help="base LLM (default: %(default)s)")
    parser.add_argument("--recommender", default=str(DEFAULT_REC), help="recommender checkpoint stem (default: committed SASRec)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    ds = load_dataset("movielens")
    results = []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        if precision not in ("bf16", "fp32", "nf4"):
            parser.error(f"unknown precision {precision!r}; valid: bf16, fp32, nf4")
        results.append(bench_precision(precision, ds, args.recommender, args.repeats, args.base_model))
    table = format_table(results)
    print(table)
    if args.json:
        write_json(args.json, {"results": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
