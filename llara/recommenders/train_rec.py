"""Train (or load) the sequential recommenders and print their results table.

    python -m llara.train_rec --model sasrec --dataset movielens
    python -m llara.train_rec --model all --dataset movielens --seeds 5          # the README's table
    python -m llara.train_rec --model all --dataset movielens --reuse            # load committed checkpoints
    python -m llara.train_rec --summarize --seeds 5 --candidate-stream shared  # one table from saved 5-seed results
    python -m llara.train_rec --model all --dataset lastfm --data-dir path/to/lastfm --seeds 5

Checkpoints go to ``<out>/<dataset>/<model>.safetensors`` with ``<model>.json`` (config, weights hash, metrics,
training log). With ``--seeds N`` the models of seeds ``seed .. seed+N-1`` are trained and reported as
mean +- std; the checkpoint written is the one of the first seed.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..checkpoint import CheckpointError, write_json
from ..config import add_dataclass_args, from_args
from ..constants import RECOMMENDER_DIR
from ..data import DEFAULT_STREAM
from ..data.args import add_dataset_args, dataset_from_args
from ..device import add_device_arg, resolve_device
from ..metrics import mean_std
from ..paper import RECOMMENDER_HR1
from ..recommenders import RECOMMENDERS, load_recommender, read_recommender_meta, save_recommender
from .trainer import RecTrainConfig, evaluate, popularity_metrics, train_recommender

DEFAULT_OUT = RECOMMENDER_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llara.train_rec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, RecTrainConfig)
    # "all" is a CLI convenience on top of the config's single model.
    for action in parser._actions:
        if action.dest == "model":
            action.choices = sorted(RECOMMENDERS) + ["all"]
    add_dataset_args(parser)
    parser.add_argument("--seeds", type=int, default=1, help="number of training seeds per model, reported as mean +- std (default: %(default)s)")
    parser.add_argument("--test-seeds", type=int, default=5, help="candidate seeds for the test metrics (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder; files go to OUT/DATASET/MODEL.* (default: checkpoints/recommenders)")
    parser.add_argument("--reuse", action="store_true", help="load an existing checkpoint of the first seed instead of training it")
    parser.add_argument("--no-save", action="store_true", help="do not write checkpoints (experiments)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--summarize", action="store_true", help="train nothing: print one table from the saved OUT/DATASET/results_*_<SEEDS>seeds.json files")
    add_device_arg(parser)
    return parser


def format_table(rows: list[dict], dataset: str, n_seeds: int, test_seeds: int, popularity: dict | None = None) -> str:
    pm = lambda m, s: f"{m:.4f} ± {s:.4f}"  # noqa: E731
    head = "| model | HR@1 | HR@5 | NDCG@5 | val HR@1 | epochs | paper HR@1 |"
    lines = [f"{dataset}: test metrics, mean ± std over {n_seeds} training seed(s), each the mean over {test_seeds} candidate seeds", "", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = RECOMMENDER_HR1.get(dataset, {}).get(r["model"])
        lines.append(f"| {r['model']} | {pm(*r['hr@1'])} | {pm(*r['hr@5'])} | {pm(*r['ndcg@5'])} | {pm(*r['val_hr@1'])} | "
                     f"{r['epochs']} | {'-' if paper is None else f'{paper:.4f}'} |")
    if popularity is not None:
        lines.append(f"| popularity (baseline) | {popularity['hr@1']:.4f} | {popularity['hr@5']:.4f} | {popularity['ndcg@5']:.4f} | - | - | - |")
        lines.append("| random (baseline) | 0.0500 | 0.2500 | - | - | - | - |")
    return "\n".join(lines)


def summary_row(name: str, per_seed: list[dict]) -> dict:
    """Mean and std over training seeds of each seed's test metrics (themselves means over candidate seeds)."""
    return {
        "model": name,
        **{key: mean_std([p["test"][key] for p in per_seed]) for key in ("hr@1", "hr@5", "ndcg@5")},
        "val_hr@1": mean_std([p["best_val_hr@1"] for p in per_seed]),
        "epochs": ", ".join(str(p["best_epoch"]) for p in per_seed),
    }


def summarize(folder: Path, dataset: str, seeds: int, test_seeds: int, popularity: dict | None = None,
              stream: str = DEFAULT_STREAM) -> int:
    """One table from the per-model result files of earlier runs with the same number of seeds, all computed with
    candidate ``stream`` (the popularity row is drawn now, with it)."""
    from ..checkpoint import read_json

    rows = {}
    for path in sorted(folder.glob(f"results_*_{seeds}seeds.json")):
        saved = read_json(path)
        if saved.get("candidate_stream", "shared") != stream:  # files without the field predate the split stream
            print(f"error: {path} was computed with the '{saved.get('candidate_stream', 'shared')}' candidate stream: "
                  "pass that --candidate-stream, so every row of the table is drawn the same way", file=sys.stderr)
            return 2
        for name, per_seed in saved.get("models", {}).items():
            rows[name] = summary_row(name, per_seed)
    if not rows:
        print(f"error: no results_*_{seeds}seeds.json in {folder}; run with --seeds {seeds} first", file=sys.stderr)
        return 2
    print(format_table([rows[m] for m in RECOMMENDERS if m in rows], dataset, seeds, test_seeds, popularity))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ds = dataset_from_args(args)
        device = resolve_device(args.device)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.test_seeds < 1:
        print("error: --seeds and --test-seeds must be >= 1", file=sys.stderr)
        return 2
    if args.summarize:
        return summarize(args.out / ds.name, ds.name, args.seeds, args.test_seeds,
                         popularity_metrics(ds, "test", list(range(args.test_seeds))), ds.candidate_stream)
    models = sorted(RECOMMENDERS) if args.model == "all" else [args.model]
    base = from_args(RecTrainConfig, argparse.Namespace(**{**vars(args), "model": models[0]}))
    test_seeds = list(range(args.test_seeds))
    rows, report = [], {"dataset": ds.name, "fingerprint": ds.fingerprint(), "test_seeds": test_seeds,
                        "candidate_stream": ds.candidate_stream, "models": {}}
    for name in models:
        per_seed = []
        for k in range(args.seeds):
            cfg = replace(base, model=name, seed=base.seed + k)
            stem = args.out / ds.name / name
            started = time.perf_counter()
            if k == 0 and args.reuse and stem.with_suffix(".json").is_file():
                try:
                    model = load_recommender(stem, n_items=ds.n_items).to(device)
                except CheckpointError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                saved = read_recommender_meta(stem)
                info = {"best_val_hr@1": saved.get("best_val_hr@1", evaluate(model, ds, "val", list(range(cfg.val_seeds)))["hr@1"]),
                        "best_epoch": saved.get("best_epoch", "loaded")}
            else:
                model, info = train_recommender(cfg, ds, progress=not args.quiet, device=device)
            test = evaluate(model, ds, "test", test_seeds)
            per_seed.append({"seed": cfg.seed, "test": test, "best_val_hr@1": info["best_val_hr@1"], "best_epoch": info["best_epoch"]})
            print(f"{name} seed {cfg.seed}: test HR@1 {test['hr@1']:.4f} ± {test['hr@1_std']:.4f} (candidate seeds), "
                  f"val HR@1 {info['best_val_hr@1']:.4f}, epoch {info['best_epoch']}, {time.perf_counter() - started:.0f}s", flush=True)
            if k == 0 and "log" in info and not args.no_save:
                save_recommender(model, stem, {"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(), "test": test, **info})
        rows.append(summary_row(name, per_seed))
        report["models"][name] = per_seed
    table = format_table(rows, ds.name, args.seeds, args.test_seeds, popularity_metrics(ds, "test", test_seeds))
    print()
    print(table)
    if not args.no_save:
        write_json(args.out / ds.name / f"results_{args.model}_{args.seeds}seeds.json", {**report, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
