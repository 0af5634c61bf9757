"""Dataset statistics beside the paper's figures, and our MovieLens samples beside the original release's.

    python -m llara.data stats --dataset movielens
    python -m llara.data stats --dataset movielens --split random --seed 1
    python -m llara.data stats --dataset lastfm --data-dir path/to/lastfm
    python -m llara.data compare-release --release-dir path/to/movielens-release   # ties, targets, histories
"""
from __future__ import annotations

import argparse
import os
import sys

from . import PAPER_FIGURES, load_dataset
from .args import add_dataset_args, dataset_from_args
from .paper_samples import RELEASE_ENV, compare, format_comparison, release_dir


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
    rel = sub.add_parser("compare-release", help="MovieLens: how many ratings tie in time, and how our val/test samples "
                         "agree with the original release's, user by user")
    rel.add_argument("--release-dir", default=os.environ.get(RELEASE_ENV), help="folder with the release's MovieLens "
                     f"val/test files (val.jsonl/test.jsonl, or its pickles with --allow-pickle); default: ${RELEASE_ENV}")
    rel.add_argument("--allow-pickle", action="store_true", help="read Val_data.df/Test_data.df when no JSONL exists; "
                     "unpickling runs code from the file, so only for files you trust")
    args = parser.parse_args(argv)
    try:
        if args.command == "compare-release":
            folder = release_dir(args.release_dir)
            print(f"our MovieLens samples (the paper's user split) against the release's rows in {folder}")
            print(format_comparison(compare(load_dataset("movielens"), folder, allow_pickle=args.allow_pickle)))
            return 0
        ds = dataset_from_args(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"dataset {ds.name} ({args.split} split)" if ds.name == "movielens" and not args.data_dir else f"dataset {ds.name} ({args.data_dir})")
    print(stats_table(ds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
