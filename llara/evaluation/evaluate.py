"""Evaluate LLaRA (or the untrained base LLM, zero-shot) on fixed candidate sets.

    python -m llara.evaluate --checkpoint checkpoints/llara/movielens-sasrec-curriculum --prompt hybrid --decode rank --seeds 5
    python -m llara.evaluate --checkpoint checkpoints/llara/movielens-sasrec-curriculum --prompt both --decode all --seeds 5
    python -m llara.evaluate --base-model smollm2-135m --prompt text --decode generate --seeds 1 --limit 20   # zero-shot
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m llara.evaluate --checkpoint ... --decode rank
    python -m llara.evaluate --checkpoint ... --decode residual --eval-samples release --release-dir path/to/movielens-release

Metrics, as the paper defines them: ValidRatio = valid answers / all samples, HitRatio@1 = correct / all
(an invalid answer is a miss). ``generate`` is greedy decoding with the first line kept, ``constrained`` decodes
over the candidate titles only, ``rank`` orders the candidates by the likelihood of their titles (also HR@5,
NDCG@5), ``head`` by the candidate head's scores (checkpoints trained with ``--head-weight``), ``next`` by the
next-item head read at the query slot (``--next-weight``: the LLM alone) and ``residual`` by the recommender's score
plus the gated next-item score (``--residual``). Each figure is the mean +- std over the candidate seeds (0..N-1,
or ``--candidate-seeds``); per-sample records go to the JSON. Candidate sets are drawn per sample from a generator
keyed by (seed, split, index); ``--candidate-stream shared`` rebuilds rows computed with the earlier (seed, index)
key. ``--eval-samples release`` evaluates on the paper's exact val/test samples, read from the original release's
folder (llara/data/paper_samples.py), instead of ours; training never changes.

Personalization, for every row (llara/evaluation/probes.py): the **swap test** (each user gets another user's history, same
target and candidates: HR@1 under swap and the share of choices kept), the **genre probe** (``--genre-probe``) and,
with ``--baselines``, the recommender, global and recent popularity as rows with the same measures and paired
comparisons of every row against them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, write_json
from ..constants import PRECISIONS, RECOMMENDER_DIR
from ..data.args import (
    add_dataset_args,
    add_eval_sample_args,
    check_eval_sample_args,
    dataset_from_args,
    eval_samples_from_args,
    parse_seeds,
)
from ..device import accelerator_for, add_device_arg
from ..metrics import bootstrap_ci, mean_std, ranking_metrics, valid_and_hit
from ..model.build import build_llara
from ..model.decoders import DECODERS, DECODES, TITLE_DECODES, offered
from ..model.follow import written_agrees
from ..model.llara_model import LLaRA
from ..model.loader import load_llara
from ..recommenders import RECOMMENDERS
from .probes import genre_probe, hits_and_swap, paired, popularity, prior_scorer, recommender_scorer

DEFAULT_REC_DIR = RECOMMENDER_DIR


def evaluate_samples(model: LLaRA, samples, candidate_sets, hybrid: bool, decode: str, batch_size: int = 8,
                     progress: bool = False, desc: str = "") -> list[dict]:
    """One record per sample: the answer (text or item), whether it is valid, the target's rank where known."""
    decoder = DECODERS[decode]
    prompts = [model.builder.build(s.history, c, hybrid=hybrid) for s, c in zip(samples, candidate_sets)]
    records: list[dict] = []
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    if decoder.batches:  # raw next-item scores, each history's pass shared across candidate seeds
        scores = cached_item_scores(model, prompts, decoder.residual, batch_size)
        for p, row in zip(prompts, scores):
            ranked = sorted(((c, float(row[c])) for c in p.candidates), key=lambda x: -x[1])
            records.append({"choice": ranked[0][0], "scores": {int(c): round(v, 4) for c, v in ranked}})
        bar.update(len(prompts))
    else:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            for reply in decoder.answer(model, chunk):
                record: dict = {} if reply.generated is None else {"answer": reply.generated}
                record["choice"] = reply.item
                if reply.ranked:
                    record["scores"] = {int(c): round(v, 4) for c, v in reply.ranked}
                records.append(record)
            bar.update(len(chunk))
    bar.close()
    for r, s in zip(records, samples):
        r.update({"user": s.user, "target": s.target, "valid": r["choice"] is not None, "hit": r["choice"] == s.target})
        if "scores" in r:
            # ties count against the target, as in metrics.target_ranks
            r["target_rank"] = sum(v >= r["scores"][s.target] for v in r["scores"].values()) - 1
    return records


def cached_item_scores(model: LLaRA, prompts, residual: bool, batch_size: int = 8) -> list[np.ndarray]:
    """Next-item scores ``(N,)`` of every prompt. The pass reads only the history (the prompt cut at its query), so
    prompts with the same history share one pass, across candidate seeds and the swap test alike."""
    cache = model.__dict__.setdefault("_item_score_cache", {})
    keys = [(p.history, p.hybrid, residual, p.user_position is not None) for p in prompts]
    todo = list({k: p for k, p in zip(keys, prompts) if k not in cache}.items())
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        pure, res = model.all_item_scores([p for _, p in chunk])  # both kinds from one pass: keep both
        for b, (k, _) in enumerate(chunk):
            cache[(k[0], k[1], False, k[3])] = pure[b].cpu().numpy()
            if res is not None:
                cache[(k[0], k[1], True, k[3])] = res[b].cpu().numpy()
    return [cache[k] for k in keys]


def llm_scorer(model: LLaRA, hybrid: bool, decode: str, batch_size: int = 8):
    """A ``llara.evaluation.probes`` scorer for one prompt kind and decode: candidate scores ``(B, C)``; decodes that only
    choose give the chosen candidate 0 and the rest -inf (an invalid answer: all -inf)."""
    from ..data import Sample

    cache: dict[tuple, np.ndarray] = {}  # (history, candidates) -> scores; ``remember`` fills it from records

    def remember(histories, candidate_sets, records: list[dict]) -> None:
        for h, cands, r in zip(histories, candidate_sets, records):
            row = np.full(len(cands), -np.inf)
            if "scores" in r:
                row[:] = [r["scores"][c] for c in cands]
            elif r["choice"] is not None:
                row[list(cands).index(r["choice"])] = 0.0
            cache[(tuple(h), tuple(cands))] = row

    def score(histories, candidate_sets) -> np.ndarray:
        todo = [k for k in dict.fromkeys((tuple(h), tuple(c)) for h, c in zip(histories, candidate_sets)) if k not in cache]
        if todo:
            samples = [Sample(h, c[0]) for h, c in todo]  # the target is not read
            remember([h for h, _ in todo], [c for _, c in todo],
                     evaluate_samples(model, samples, [c for _, c in todo], hybrid, decode, batch_size))
        return np.stack([cache[(tuple(h), tuple(c))] for h, c in zip(histories, candidate_sets)])

    score.remember = remember  # type: ignore[attr-defined]
    return score


def probe_row(scorer, ds, samples, seeds: list[int], swap_seed: int | None, genre: bool, split: str) -> dict:
    """Hits, swap test and (optionally) the genre probe of one scorer on ``samples`` and candidate ``seeds``."""
    cands = {seed: ds.candidates(split, seed=seed)[: len(samples)] for seed in seeds}
    out = hits_and_swap(scorer, samples, cands, swap_seed=swap_seed)
    if genre:
        out["genre"] = genre_probe(scorer, ds.catalog, popularity(ds))
    return out


def baseline_rows(ds, samples, seeds: list[int], swap_seed: int | None, genre: bool, split: str,
                  recommender_dir: Path, recommenders: list[str]) -> dict[str, dict]:
    """The recommenders and the history-free priors, probed exactly as the LLM rows."""
    from ..recommenders import load_recommender

    scorers = {name: recommender_scorer(load_recommender(recommender_dir / ds.name / name, n_items=ds.n_items))
               for name in recommenders}
    scorers["popularity"] = prior_scorer(popularity(ds))
    scorers["recent popularity"] = prior_scorer(popularity(ds, recent=10))
    return {name: probe_row(sc, ds, samples, seeds, swap_seed, genre, split) for name, sc in scorers.items()}


def format_probe(name: str, m: dict) -> str:
    lo, hi = m["hr@1_ci95"]
    text = f"{name:40s} HR@1 {m['hr@1']:.4f} ± {m['hr@1_std']:.4f} [95% CI {lo:.3f}-{hi:.3f}]"
    if "swap" in m:
        text += f"  swap: HR@1 {m['swap']['hr@1']:.4f}, kept {m['swap']['kept']:.0%}"
    if "genre" in m:
        g = m["genre"]
        text += f"  genre: min {g['min_in_genre']:.0%} mean {g['mean_in_genre']:.0%} in-genre, {g['distinct_top_answers']} distinct"
    return text


def summarize(per_seed: list[list[dict]], decode: str) -> dict:
    """Mean +- std over seeds, and a bootstrap 95% interval over users of the seed-averaged hit."""
    rows = []
    for records in per_seed:
        row = valid_and_hit([r["choice"] for r in records], [r["target"] for r in records])
        if DECODERS[decode].ranking_metrics:
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
    parser.add_argument("--recommender", default="sasrec", choices=list(RECOMMENDERS), help="zero-shot only: the item table behind hybrid slots (default: %(default)s)")
    parser.add_argument("--recommender-dir", type=Path, default=DEFAULT_REC_DIR, help="zero-shot (and its --baselines): folder with <dataset>/<recommender>.safetensors (default: checkpoints/recommenders); "
                        "a checkpoint's --baselines use the recommender it was trained with")
    parser.add_argument("--prompt", default="hybrid", choices=["text", "hybrid", "both"], help="prompt kind (default: %(default)s)")
    parser.add_argument("--decode", default="rank", choices=[*DECODES, "all"], help="how the model answers (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="candidate seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--candidate-seeds", default="", help="explicit candidate seeds instead, e.g. 5,6,7 or 100-104 "
                        "(seeds never looked at while developing a model)")
    parser.add_argument("--swap-seed", type=int, default=0, help="seed of the history swap (a derangement of the users); "
                        "-1 skips the swap test (default: %(default)s)")
    parser.add_argument("--genre-probe", action="store_true", help="also run the genre probe (70 genre-pure histories)")
    parser.add_argument("--baselines", action="store_true", help="also probe the recommenders and the global/recent "
                        "popularity priors, and compare every row with them (paired over users)")
    parser.add_argument("--parts", action="store_true", help="also the part ablation (llara/evaluation/parts.py): the LLM alone "
                        "(next) with the full prompt, each part removed and each part alone, paired against the full "
                        "prompt and the checkpoint's recommender; every position of the users: python -m llara.parts")
    parser.add_argument("--eval-split", default="test", choices=["val", "test"], help="which users to evaluate (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N samples (0 = all)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="override the checkpoint's precision")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate batch (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics and per-sample records here")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    add_dataset_args(parser)
    add_eval_sample_args(parser)
    add_device_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value, low in (("--seeds", args.seeds, 1), ("--limit", args.limit, 0), ("--batch-size", args.batch_size, 1),
                             ("--threads", args.threads, 0), ("--swap-seed", args.swap_seed, -1)):
        if value < low:
            print(f"error: {flag} must be >= {low}", file=sys.stderr)
            return 2
    try:
        args.seed_list = parse_seeds(args.candidate_seeds) if args.candidate_seeds else list(range(args.seeds))
        check_eval_sample_args(args)  # a missing release folder is said before any model loads
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    accelerator = accelerator_for(args.device)  # under accelerate launch: this process's device
    if args.checkpoint:
        model, meta, ds = load_llara(args.checkpoint, precision=args.precision, device=accelerator.device)
        name = Path(args.checkpoint).name
    else:
        ds = dataset_from_args(args)
        rec = args.recommender_dir / ds.name / args.recommender
        model = build_llara(ds, str(rec), base_model=args.base_model, precision=args.precision or "bf16",
                            device=accelerator.device).eval()
        name = f"{args.base_model} zero-shot"
    ds = eval_samples_from_args(ds, args)  # the candidate stream, and the release's val/test samples if asked for
    samples = ds.split(args.eval_split)
    if args.limit > 0:
        samples = samples[: args.limit]
    kinds = ["text", "hybrid"] if args.prompt == "both" else [args.prompt]
    decodes = list(offered(model)) if args.decode == "all" else [args.decode]
    if decodes[0] not in offered(model):
        raise ValueError(f"--decode {decodes[0]} needs a checkpoint trained for it ({DECODERS[decodes[0]].needs})")
    results: dict = {"model": name, "split": args.eval_split, "samples": len(samples), "candidate_seeds": args.seed_list,
                     "candidate_stream": ds.candidate_stream, "eval_samples": args.eval_samples,
                     "metrics": {}, "records": {}, "probes": {}, "baselines": {}, "paired": {}}
    for kind in kinds:
        for decode in decodes:
            started, per_seed = time.perf_counter(), []
            for seed in args.seed_list:
                cands = ds.candidates(args.eval_split, seed=seed)[: len(samples)]
                with accelerator.split_between_processes(list(range(len(samples)))) as mine:
                    records = evaluate_samples(model, [samples[i] for i in mine], [cands[i] for i in mine], kind == "hybrid", decode,
                                               args.batch_size, progress=accelerator.is_main_process, desc=f"{kind}/{decode} seed {seed}")
                per_seed.append(_gather(accelerator, records))
            key = f"{kind}/{decode}"
            results["metrics"][key] = {**summarize(per_seed, decode), "seconds_per_sample": round((time.perf_counter() - started) / (len(samples) * len(args.seed_list)), 3)}
            results["records"][key] = per_seed
            accelerator.print(format_row(name, key, results["metrics"][key]))
            if accelerator.num_processes == 1 and (args.swap_seed >= 0 or args.genre_probe or args.baselines):
                scorer = llm_scorer(model, kind == "hybrid", decode, args.batch_size)
                for seed, records in zip(args.seed_list, per_seed):  # the answers above are not computed again
                    scorer.remember([s.history for s in samples], ds.candidates(args.eval_split, seed=seed)[: len(samples)], records)
                probe = probe_row(scorer, ds, samples, args.seed_list,
                                  args.swap_seed if args.swap_seed >= 0 else None, args.genre_probe, args.eval_split)
                results["probes"][key] = probe
                accelerator.print(format_probe(f"{name} {key}", probe))
    results["agreement"] = written_vs_ranked(results["records"])
    for key, share in results["agreement"].items():
        accelerator.print(f"{name:40s} {key:40s} same item: {share:.4f}")
    if args.parts and accelerator.is_main_process:
        _part_ablation(model, ds, samples, args, results, hybrid=args.prompt != "text")
    if args.baselines and accelerator.is_main_process:
        own, rec_dir = args.recommender, Path(args.recommender_dir)
        if args.checkpoint:  # the recommender the checkpoint was trained with, from where it was trained
            from ..checkpoint import resolve_path

            stem = resolve_path(meta["recommender"]["path"], Path(args.checkpoint))
            own, rec_dir = stem.name, stem.parent.parent
        # its own recommender, and SASRec (the paper's) for reference where it exists beside it
        rec_names = [own] + (["sasrec"] if own != "sasrec" and (rec_dir / ds.name / "sasrec.json").is_file() else [])
        for base, m in baseline_rows(ds, samples, args.seed_list, args.swap_seed if args.swap_seed >= 0 else None,
                                     args.genre_probe, args.eval_split, rec_dir, rec_names).items():
            results["baselines"][base] = m
            accelerator.print(format_probe(base, m))
        for key, m in results["probes"].items():
            for base, b in results["baselines"].items():
                c = paired(m["per_user"], b["per_user"])
                results["paired"][f"{key} - {base}"] = c
                accelerator.print(f"  {key} - {base}: {c['diff']:+.4f} [95% CI {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}], "
                                  f"better for {c['a_better']} users, worse for {c['b_better']}")
    if accelerator.is_main_process and args.json:
        write_json(args.json, results)
    return 0


def written_vs_ranked(records: dict[str, list[list[dict]]]) -> dict[str, float]:
    """How often each title-writing decode (``generate``, ``constrained``, ``rank``) picks the next-item head's top-1
    (``next``) on the same samples, over all seeds: ``{"hybrid/generate = hybrid/next": share}``."""
    shares = {}
    for key, per_seed in records.items():
        kind, decode = key.split("/")
        head = records.get(f"{kind}/next")
        if decode in TITLE_DECODES and head is not None:
            chosen = [r["choice"] for seed in per_seed for r in seed]
            first = [r["choice"] for seed in head for r in seed]
            shares[f"{key} = {kind}/next"] = round(written_agrees(chosen, first), 4)
    return shares


def _part_ablation(model: LLaRA, ds, samples, args: argparse.Namespace, results: dict, hybrid: bool) -> None:
    """``--parts``: the part-ablation rows on the evaluated samples and candidate seeds (``results["parts"]``)."""
    from .parts import absent_rows, evaluate_parts, format_table, model_parts, report

    if model.next_head is None:
        raise ValueError("--parts reads the next-item head: this checkpoint has none (train with --next-weight > 0)")
    cands = [c for seed in args.seed_list for c in ds.candidates(args.eval_split, seed=seed)[: len(samples)]]
    sets = {"paper": (list(samples) * len(args.seed_list), cands)}
    raw = evaluate_parts(model, ds, hybrid, sets, model.recommender, args.batch_size)
    results["parts"] = report(raw, ds, 10, sets)
    print(format_table(results["parts"], absent_rows(model_parts(model) if hybrid else ("titles",))))


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
