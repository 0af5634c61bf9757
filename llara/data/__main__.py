"""Dataset statistics beside the paper's figures.

    python -m llara.data stats --dataset movielens
    python -m llara.data stats --dataset movielens --split random --seed 1
    python -m llara.data stats --dataset lastfm --data-dir path/to/lastfm
"""
from __future__ import annotations

import argparse
import sys

from . import DATASETS, PAPER_FIGURES, load_dataset


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The flags every command that loads a dataset shares."""
    parser.add_argument("--dataset", default="movielens", choices=sorted(DATASETS), help="which dataset to load")
    parser.add_argument("--data-dir", default=None, help="folder in the original release's format (needed for lastfm and steam)")
    parser.add_argument("--split", default="paper", choices=["paper", "random"], help="MovieLens user split: the paper's val/test users, or a seeded random 8:1:1")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the random user split")
    parser.add_argument("--allow-pickle", action="store_true", help="read the release's pandas pickles (*.df) when no JSONL exists; unpickling runs code from the file, so only for files you trust")


def dataset_from_args(args: argparse.Namespace):
    return load_dataset(args.dataset, data_dir=args.data_dir, split=args.split, seed=args.split_seed, allow_pickle=args.allow_pickle)


def stats_table(ds) -> str:
    users = {s: len(set(x.user for x in ds.split(s))) if ds.users else None for s in ("train", "val", "test")}
    n_users = sum(len(v) for v in ds.users.values()) if ds.users else None
    ours = {
        "users": n_users,
        "items": ds.n_items,
        "interactions": ds.n_interactions or None,
        "train samples": len(ds.train),
        "val samples": len(ds.val),
        "test samples": len(ds.test),
        "train users (with samples)": users["train"],
        "val users (with samples)": users["val"],
        "test users (with samples)": users["test"],
    }
    paper = PAPER_FIGURES.get(ds.name, {})
    lines = [f"{'':28s} {'ours':>10s} {'paper':>10s}"]
    for key, value in ours.items():
        fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
        lines.append(f"{key:28s} {fmt(value):>10s} {fmt(paper.get(key)):>10s}")
    lines.append(f"fingerprint {ds.fingerprint()[:16]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="print users/items/interactions and samples per split beside the paper's figures")
    add_dataset_args(stats)
    args = parser.parse_args(argv)
    try:
        ds = dataset_from_args(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"dataset {ds.name} ({args.split} split)" if ds.name == "movielens" and not args.data_dir else f"dataset {ds.name} ({args.data_dir})")
    print(stats_table(ds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
