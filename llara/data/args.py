"""Command-line flags every command that loads a dataset shares, and the dataset they describe (a library module:
commands import their flags from here, never from another command).
"""
from __future__ import annotations

import argparse
import dataclasses

from . import CANDIDATE_STREAMS, DATASETS, DEFAULT_STREAM, load_dataset
from .paper_samples import RELEASE_ENV, release_dir, with_release_samples

EVAL_SAMPLES = ("ours", "release")


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The flags every command that loads a dataset shares."""
    parser.add_argument("--dataset", default="movielens", choices=sorted(DATASETS), help="which dataset to load")
    parser.add_argument("--data-dir", default=None, help="folder in the original release's format (needed for lastfm and steam)")
    parser.add_argument("--split", default="paper", choices=["paper", "random"], help="MovieLens user split: the paper's val/test users, or a seeded random 8:1:1")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the random user split")
    parser.add_argument("--allow-pickle", action="store_true", help="read the release's pandas pickles (*.df) when no JSONL exists; unpickling runs code from the file, so only for files you trust")
    add_stream_arg(parser)


def add_stream_arg(parser: argparse.ArgumentParser) -> None:
    """``--candidate-stream``: which per-sample generators the fixed candidate sets come from."""
    parser.add_argument("--candidate-stream", default=DEFAULT_STREAM, choices=CANDIDATE_STREAMS,
                        help="candidate sets of sample i drawn from a generator keyed by (seed, split, i) ('split'), or "
                        "by (seed, i) as in the earlier rows ('shared': val and test sample i then share their draws) "
                        "(default: %(default)s)")


def add_eval_sample_args(parser: argparse.ArgumentParser) -> None:
    """``--eval-samples`` and ``--release-dir``: evaluate on our val/test samples or on the original release's."""
    parser.add_argument("--eval-samples", default="ours", choices=EVAL_SAMPLES,
                        help="val/test samples to evaluate: ours, or 'release': the paper's exact samples, read from "
                        "--release-dir (training samples are never replaced) (default: %(default)s)")
    parser.add_argument("--release-dir", default=None, help="with --eval-samples release: a folder with the original "
                        f"release's val/test files (val.jsonl/test.jsonl, or Val_data.df/Test_data.df with --allow-pickle); "
                        f"default: ${RELEASE_ENV}")


def dataset_from_args(args: argparse.Namespace):
    ds = load_dataset(args.dataset, data_dir=args.data_dir, split=args.split, seed=args.split_seed, allow_pickle=args.allow_pickle)
    ds.candidate_stream = getattr(args, "candidate_stream", DEFAULT_STREAM)
    return ds


def check_eval_sample_args(args: argparse.Namespace) -> None:
    """With ``--eval-samples release``: resolve the release folder now (flag or environment), or say what is missing."""
    if getattr(args, "eval_samples", "ours") == "release":
        args.release_dir = str(release_dir(args.release_dir))


def eval_samples_from_args(ds, args: argparse.Namespace):
    """``ds`` with its candidate stream from the flags, and the release's val/test samples where asked for."""
    ds = dataclasses.replace(ds, candidate_stream=getattr(args, "candidate_stream", DEFAULT_STREAM))
    if getattr(args, "eval_samples", "ours") == "release":
        return with_release_samples(ds, args.release_dir, allow_pickle=getattr(args, "allow_pickle", False))
    return ds


def parse_seeds(text: str) -> list[int]:
    """``"0,1,7"`` -> [0, 1, 7]; ranges too: ``"10-14"``."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"candidate seeds must be whole numbers >= 0 or ranges like 10-14, got {part!r}")
        if hi and int(hi) < int(lo):
            raise ValueError(f"a seed range must go upwards, got {part!r}")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"candidate seeds must be a non-empty list without repeats, got {text!r}")
    return seeds


def seeds_arg(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--paper-seeds`` style text (``"0,1,7"``, ``"100-102"``) as seeds, or ``parser.error`` with the reason."""
    try:
        return parse_seeds(text)
    except ValueError as err:
        parser.error(str(err))
        raise  # parser.error exits; this line only tells the type checker so
