"""Evaluate LLaRA (or the untrained base LLM, zero-shot) on fixed candidate sets.

    python -m llara.evaluate --checkpoint checkpoints/llara/movielens-sasrec-curriculum --prompt hybrid --decode rank --seeds 5
    python -m llara.evaluate --checkpoint checkpoints/llara/movielens-sasrec-curriculum --prompt both --decode all --seeds 5
    python -m llara.evaluate --base-model smollm2-135m --prompt text --decode generate --seeds 1 --limit 20   # zero-shot
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m llara.evaluate --checkpoint ... --decode rank

Metrics, as the paper defines them: ValidRatio = valid answers / all samples, HitRatio@1 = correct / all
(an invalid answer is a miss). ``generate`` is greedy decoding with the first line kept, ``constrained`` decodes
over the candidate titles only, ``rank`` orders the candidates by the likelihood of their titles (also HR@5,
NDCG@5) and ``head`` by the candidate head's scores (checkpoints trained with ``--head-weight``). Each figure is
the mean +- std over candidate seeds 0..seeds-1; per-sample records go to the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .constants import RECOMMENDER_DIR
from .checkpoint import CheckpointError, load_llara, write_json
from .data.__main__ import add_dataset_args, dataset_from_args
from .metrics import bootstrap_ci, match_answer, mean_std, ranking_metrics
from .model import LLaRA, build_llara

DECODES = ("generate", "constrained", "rank", "head")
DEFAULT_REC_DIR = RECOMMENDER_DIR


def evaluate_samples(model: LLaRA, samples, candidate_sets, hybrid: bool, decode: str, batch_size: int = 8,
                     progress: bool = False, desc: str = "") -> list[dict]:
    """One record per sample: the answer (text or item), whether it is valid, the target's rank where known."""
    builder, titles = model.builder, model.builder.titles
    prompts = [builder.build(s.history, c, hybrid=hybrid) for s, c in zip(samples, candidate_sets)]
    records: list[dict] = []
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    if decode == "generate":
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            for p, answer in zip(chunk, model.generate(chunk)):
                names = [titles[c] for c in p.candidates]
                chosen = match_answer(answer, names)
                records.append({"answer": answer, "choice": None if chosen is None else p.candidates[chosen]})
            bar.update(len(chunk))
    else:
        for p in prompts:
            if decode == "constrained":
                records.append({"choice": model.constrained(p)})
            else:
                ranked = model.rank(p) if decode == "rank" else model.rank_head(p)
                records.append({"choice": ranked[0][0], "scores": {int(c): round(s, 4) for c, s in ranked}})
            bar.update(1)
    bar.close()
    for r, s, c in zip(records, samples, candidate_sets):
        r.update({"user": s.user, "target": s.target, "valid": r["choice"] is not None, "hit": r["choice"] == s.target})
        if "scores" in r:
            # ties count against the target, as in metrics.target_ranks
            r["target_rank"] = sum(v >= r["scores"][s.target] for v in r["scores"].values()) - 1
    return records


def summarize(per_seed: list[list[dict]], decode: str) -> dict:
    """Mean +- std over seeds, and a bootstrap 95% interval over users of the seed-averaged hit."""
    rows = []
    for records in per_seed:
        row = {"valid_ratio": float(np.mean([r["valid"] for r in records])), "hr@1": float(np.mean([r["hit"] for r in records]))}
        if decode in ("rank", "head"):
            scores = np.array([[r["scores"][c] for c in sorted(r["scores"])] for r in records])
            target_pos = np.array([sorted(r["scores"]).index(r["target"]) for r in records])
            row.update({k: v for k, v in ranking_metrics(scores, target_pos).items() if k != "hr@1"})
        rows.append(row)
    out: dict = {"seeds": len(rows), "samples": len(per_seed[0])}
    for key in rows[0]:
        out[key], out[key + "_std"] = mean_std([r[key] for r in rows])
    per_user = np.mean([[r["hit"] for r in records] for records in per_seed], axis=0)
    out["hr@1_ci95"] = bootstrap_ci(per_user)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llara.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a LLaRA checkpoint folder (written by python -m llara.train)")
    src.add_argument("--base-model", help="evaluate this untrained base LLM zero-shot (e.g. smollm2-135m)")
    parser.add_argument("--recommender", default="sasrec", choices=["sasrec", "gru4rec", "caser"], help="zero-shot only: the item table behind hybrid slots (default: %(default)s)")
    parser.add_argument("--recommender-dir", type=Path, default=DEFAULT_REC_DIR, help="zero-shot only: folder with <dataset>/<recommender>.safetensors (default: checkpoints/recommenders)")
    parser.add_argument("--prompt", default="hybrid", choices=["text", "hybrid", "both"], help="prompt kind (default: %(default)s)")
    parser.add_argument("--decode", default="rank", choices=[*DECODES, "all"], help="how the model answers (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="candidate seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--eval-split", default="test", choices=["val", "test"], help="which users to evaluate (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N samples (0 = all)")
    parser.add_argument("--precision", default=None, choices=["bf16", "fp32", "nf4"], help="override the checkpoint's precision")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate batch (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics and per-sample records here")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    add_dataset_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value, low in (("--seeds", args.seeds, 1), ("--limit", args.limit, 0), ("--batch-size", args.batch_size, 1),
                             ("--threads", args.threads, 0)):
        if value < low:
            print(f"error: {flag} must be >= {low}", file=sys.stderr)
            return 2
    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator()
    if args.checkpoint:
        model, meta, ds = load_llara(args.checkpoint, precision=args.precision)
        name = Path(args.checkpoint).name
    else:
        ds = dataset_from_args(args)
        rec = args.recommender_dir / ds.name / args.recommender
        model = build_llara(ds, str(rec), base_model=args.base_model, precision=args.precision or "bf16").eval()
        name = f"{args.base_model} zero-shot"
    samples = ds.split(args.eval_split)
    if args.limit > 0:
        samples = samples[: args.limit]
    kinds = ["text", "hybrid"] if args.prompt == "both" else [args.prompt]
    decodes = [d for d in DECODES if d != "head" or model.head is not None] if args.decode == "all" else [args.decode]
    if "head" in decodes and model.head is None:
        raise ValueError("--decode head needs a checkpoint trained with --head-weight > 0")
    results: dict = {"model": name, "split": args.eval_split, "samples": len(samples), "metrics": {}, "records": {}}
    for kind in kinds:
        for decode in decodes:
            started, per_seed = time.perf_counter(), []
            for seed in range(args.seeds):
                cands = ds.candidates(args.eval_split, seed=seed)[: len(samples)]
                with accelerator.split_between_processes(list(range(len(samples)))) as mine:
                    records = evaluate_samples(model, [samples[i] for i in mine], [cands[i] for i in mine], kind == "hybrid", decode,
                                               args.batch_size, progress=accelerator.is_main_process, desc=f"{kind}/{decode} seed {seed}")
                per_seed.append(_gather(accelerator, records))
            key = f"{kind}/{decode}"
            results["metrics"][key] = {**summarize(per_seed, decode), "seconds_per_sample": round((time.perf_counter() - started) / (len(samples) * args.seeds), 3)}
            results["records"][key] = per_seed
            accelerator.print(format_row(name, key, results["metrics"][key]))
    if accelerator.is_main_process and args.json:
        write_json(args.json, results)
    return 0


def _gather(accelerator, records: list[dict]) -> list[dict]:
    if accelerator.num_processes == 1:
        return records
    from accelerate.utils import gather_object

    return gather_object(records)


def format_row(name: str, key: str, m: dict) -> str:
    lo, hi = m["hr@1_ci95"]
    extra = f"  NDCG@5 {m['ndcg@5']:.4f}" if "ndcg@5" in m else ""
    return (f"{name:40s} {key:20s} ValidRatio {m['valid_ratio']:.4f} ± {m['valid_ratio_std']:.4f}  "
            f"HR@1 {m['hr@1']:.4f} ± {m['hr@1_std']:.4f} [95% CI {lo:.3f}-{hi:.3f}]{extra}  ({m['seconds_per_sample']} s/sample)")


if __name__ == "__main__":
    sys.exit(main())
