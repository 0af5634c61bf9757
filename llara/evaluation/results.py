"""The MovieLens results table (docs/results.md), regenerated from the committed checkpoints.

    python -m llara.results                                  # every row (see docs/results.md for the wall time)
    python -m llara.results --rows sasrec,gru4rec,caser      # just the recommenders (seconds)
    python -m llara.results --reuse                          # rebuild the table from docs/results/*.json only
    python -m llara.results --reuse --candidate-stream shared            # the rows of the earlier candidate stream
    python -m llara.results --rows sasrec,gru4rec --eval-samples release --release-dir path/to/movielens-release

    python -m llara.results --rows path/to/checkpoint               # any LLaRA checkpoint folder, by path

Rows: the three committed recommenders, the history-free priors (global and recent popularity), the untrained
base LLM (zero-shot, text prompt) and every LLaRA checkpoint under checkpoints/llara/ or given by path (its own
prompt kind: text for a text-only run, hybrid otherwise). Columns: ValidRatio / HitRatio@1 of greedy generation
(the paper's protocol) and of constrained decoding, HR@1 / NDCG@5 of ``rank`` (title likelihood), of the candidate
``head``, of the ``next``-item head and of ``residual`` scoring where a checkpoint has them. Every scored column is
also probed for personalization (llara/evaluation/probes.py): the history swap test and the genre probe. Every model sees the same
95 test users and the same candidate sets (seeds 0..N-1), so differences are paired: the table ends with paired
bootstrap intervals of HR@1 differences. One row's figures and per-user records go to docs/results/<row>.json,
which ``--reuse`` reads instead of running the row again.

Groups: rows are paired only with rows of the same candidate stream and the same val/test samples, and each group
has its own folder: docs/results (the default stream, our samples), docs/results/shared (``--candidate-stream
shared``: the earlier stream, which rows computed before it changed used), docs/results/release (``--eval-samples
release``: the paper's exact test samples, read from the original release's folder; the table then also sets each
row beside the same row on our samples) and docs/results/release-shared.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import numpy as np

from ..checkpoint import read_json, write_json
from ..constants import LLARA_DIR, PRECISIONS, RECOMMENDER_DIR, REPO_ROOT
from ..data import DEFAULT_STREAM, SequenceDataset, load_dataset
from ..data.args import add_eval_sample_args, add_stream_arg, check_eval_sample_args
from ..data.paper_samples import with_release_samples
from ..device import add_device_arg, resolve_device
from ..metrics import bootstrap_ci, mean_std, ranking_metrics, target_ranks
from ..model.decoders import DECODERS, DECODES, available
from ..recommenders import RECOMMENDERS as RECOMMENDER_CLASSES
from .results_tables import (
    beside_ours_table,
    describe_group,
    group,
    paired_table,
    personalization_table,
    table,
    training_table,
)

OUT_DIR = REPO_ROOT / "docs" / "results"
RECOMMENDERS = tuple(RECOMMENDER_CLASSES)  # sasrec, gru4rec, caser: the table order
PRIORS = {"popularity": 0, "recent-popularity": 10}  # history-free rows: counts of all / the last 10 training targets
ZERO_SHOT = "zero-shot"


@dataclasses.dataclass(frozen=True)
class Group:
    """The candidate stream and the val/test samples of one run: its rows are paired with each other only."""

    stream: str = DEFAULT_STREAM
    samples: str = "ours"  # or "release": the paper's exact val/test samples from ``release_dir``
    release_dir: str | None = None
    allow_pickle: bool = False

    def folder(self, base: Path = OUT_DIR) -> Path:
        """docs/results, docs/results/shared, docs/results/release or docs/results/release-shared."""
        parts = [name for name, on in (("release", self.samples == "release"), ("shared", self.stream == "shared")) if on]
        return base / "-".join(parts) if parts else base

    def fields(self) -> dict:
        """What every row of this group records about how it was computed."""
        return {"candidate_stream": self.stream, "eval_samples": self.samples}

    def apply(self, ds: SequenceDataset) -> SequenceDataset:
        """``ds`` with this group's candidate stream and val/test samples (training samples never change)."""
        ds = dataclasses.replace(ds, candidate_stream=self.stream)
        if self.samples != "release":
            return ds
        if self.release_dir is None:
            raise ValueError("the release's samples need its folder (--release-dir)")
        return with_release_samples(ds, self.release_dir, self.allow_pickle)


@functools.cache
def movielens(grp: Group = Group()) -> SequenceDataset:
    """The paper's MovieLens split under ``grp``, loaded once per run (every row and the fusion rows share it)."""
    return grp.apply(load_dataset("movielens"))


def _per_user(records: list[list[dict]]) -> list[float]:
    return np.mean([[float(r["hit"]) for r in recs] for recs in records], axis=0).round(4).tolist()


def run_baseline(name: str, ds, seeds: int) -> dict:
    """A recommender or a history-free prior: ranked like the LLM rows, and probed the same way."""
    from ..recommenders import load_recommender
    from .evaluate import probe_row
    from .probes import popularity, prior_scorer, recommender_scorer

    if name in PRIORS:
        scorer, kind = prior_scorer(popularity(ds, recent=PRIORS[name])), "history-free"
    else:
        scorer, kind = recommender_scorer(load_recommender(RECOMMENDER_DIR / ds.name / name, n_items=ds.n_items)), "recommender"
    samples = ds.split("test")
    per_seed, hits = [], []
    for seed in range(seeds):
        cands = ds.candidates("test", seed=seed)
        target_pos = np.array([c.index(s.target) for c, s in zip(cands, samples)])
        scores = scorer([s.history for s in samples], cands)
        per_seed.append(ranking_metrics(scores, target_pos))
        hits.append((target_ranks(scores, target_pos) == 0).astype(float))
    metrics = {k: mean_std([m[k] for m in per_seed]) for k in ("hr@1", "ndcg@5")}
    per_user = np.mean(hits, axis=0)
    probe = probe_row(scorer, ds, samples, list(range(seeds)), swap_seed=0, genre=True, split="test")
    return {"row": name, "kind": kind, "columns": {"rank": {
        "seeds": seeds, "valid_ratio": 1.0, "hr@1": metrics["hr@1"][0], "hr@1_std": metrics["hr@1"][1],
        "ndcg@5": metrics["ndcg@5"][0], "ndcg@5_std": metrics["ndcg@5"][1], "hr@1_ci95": bootstrap_ci(per_user),
        "per_user": per_user.round(4).tolist(), "probe": _probe_summary(probe)}}}


def _probe_summary(probe: dict) -> dict:
    """What the tables read of a probe: the swap test and the genre probe (per-user hits are the column's own)."""
    return {k: probe[k] for k in ("swap", "genre") if k in probe}


def run_llm(row: str, seeds: int, gen_seeds: int, decodes: list[str], precision: str, limit: int = 0,
            grp: Group = Group(), device: str = "cpu") -> dict:
    """Evaluate one LLM row with ``llara.evaluation.evaluate``'s functions; per-user hits kept for paired comparisons."""
    from ..model.build import build_llara
    from ..model.loader import load_llara
    from .evaluate import evaluate_samples, llm_scorer, probe_row, summarize

    if row == ZERO_SHOT:
        ds = movielens(grp)
        model = build_llara(ds, str(RECOMMENDER_DIR / ds.name / "sasrec"), precision=precision, device=device).eval()
        kind, meta = "text", {"config": {"mode": "zero-shot"}}
    else:
        model, meta, ds = load_llara(str(checkpoint_path(row)), precision=precision, device=device)
        ds = grp.apply(ds)  # the checkpoint's own dataset (its user split), under this group's stream and samples
        kind = "text" if meta.get("config", {}).get("mode") == "text" else "hybrid"
        row = checkpoint_path(row).name
    samples = ds.split("test")[: limit or None]
    out: dict = {"row": row, "kind": kind, "precision": precision, "config": meta.get("config", {}),
                 "training": {k: meta[k] for k in ("step", "total_steps", "train_seconds", "samples_per_second", "peak_rss_mb")
                              if k in meta}, "columns": {}}
    for decode in decodes:
        if not available(model, decode):
            continue
        n = seeds if DECODERS[decode].one_pass else gen_seeds  # one pass per sample: all seeds; the slow decodes: fewer
        started, per_seed = time.perf_counter(), []
        for seed in range(n):
            cands = ds.candidates("test", seed=seed)[: len(samples)]
            per_seed.append(evaluate_samples(model, samples, cands, kind == "hybrid", decode, progress=True,
                                             desc=f"{row} {decode} seed {seed}"))
        m = summarize(per_seed, decode)
        m.update({"per_user": _per_user(per_seed), "seconds_per_sample": round((time.perf_counter() - started) / (len(samples) * n), 3)})
        if decode == "generate":
            m["answers"] = [r.get("answer", "") for r in per_seed[0]]
        if decode == "head":  # kept for the fusion row: head log-probabilities per sample and seed
            m["scores"] = [[r["scores"] for r in recs] for recs in per_seed]
            val = ds.split("val")[: limit or None]
            m["val_scores"] = [r["scores"] for r in evaluate_samples(model, val, ds.candidates("val", seed=0)[: len(val)],
                                                                      kind == "hybrid", "head", progress=True, desc=f"{row} head val")]
        if DECODERS[decode].scores:  # personalization: swap test and genre probe, on the same users and candidate seeds
            scorer = llm_scorer(model, kind == "hybrid", decode)
            for seed, records in enumerate(per_seed):  # the answers above are not computed again
                scorer.remember([s.history for s in samples], ds.candidates("test", seed=seed)[: len(samples)], records)
            probe = probe_row(scorer, ds, samples, list(range(n)), swap_seed=0, genre=True, split="test")
            m["probe"] = _probe_summary(probe)
            print(f"  {row} {decode}: swap HR@1 {probe['swap']['hr@1']:.4f}, kept {probe['swap']['kept']:.0%}; genre "
                  f"min {probe['genre']['min_in_genre']:.0%}, {probe['genre']['distinct_top_answers']} distinct", flush=True)
        out["columns"][decode] = m
        print(f"  {row} {decode}: HR@1 {m['hr@1']:.4f} ± {m['hr@1_std']:.4f}, ValidRatio {m['valid_ratio']:.4f} "
              f"({m['seconds_per_sample']} s/sample)", flush=True)
    return out


def checkpoint_path(row: str) -> Path:
    """A row names a folder under checkpoints/llara/ or is a path to a checkpoint folder."""
    return Path(row) if "/" in row else LLARA_DIR / row


FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def fusion_row(llm: dict, ds, recommender: str = "sasrec") -> dict | None:
    """Late fusion (beyond the paper): log p_head + w * log p_recommender over the 20 candidates, ``w`` chosen on
    the validation users (candidate seed 0) and then applied unchanged to the test users."""
    from ..recommenders import load_recommender
    from ..recommenders.trainer import candidate_scores

    head = llm["columns"].get("head")
    if not head or "scores" not in head:
        return None
    rec = load_recommender(RECOMMENDER_DIR / ds.name / recommender, n_items=ds.n_items)

    def hits(split: str, seed: int, head_scores: list[dict], w: float) -> np.ndarray:
        samples = ds.split(split)[: len(head_scores)]
        cands = ds.candidates(split, seed=seed)[: len(samples)]
        h = np.array([[float(sc[str(c)] if str(c) in sc else sc[c]) for c in cs] for sc, cs in zip(head_scores, cands)])
        r = _log_softmax(candidate_scores(rec, samples, cands).astype(np.float64))
        fused = _log_softmax(h) + w * r
        target = np.array([cs.index(s.target) for cs, s in zip(cands, samples)])
        return (target_ranks(fused, target) == 0).astype(float)

    val = {w: hits("val", 0, head["val_scores"], w).mean() for w in FUSION_WEIGHTS}
    best = max(FUSION_WEIGHTS, key=lambda w: (round(val[w], 6), -w))  # ties: the smaller weight
    per_seed = [hits("test", seed, scores, best) for seed, scores in enumerate(head["scores"])]
    accs = [h.mean() for h in per_seed]
    per_user = np.mean(per_seed, axis=0)
    mean, std = mean_std(accs)
    return {"row": f"{llm['row']} + {recommender} fusion (w={best:g} from val)", "kind": llm["kind"],
            **{k: llm[k] for k in ("candidate_stream", "eval_samples") if k in llm}, "columns": {"head": {
        "seeds": len(per_seed), "valid_ratio": 1.0, "hr@1": mean, "hr@1_std": std, "hr@1_ci95": bootstrap_ci(per_user),
        "per_user": per_user.round(4).tolist(), "val_hr@1_by_weight": {str(w): round(v, 4) for w, v in val.items()}}}}


def default_pairs(rows: list[str]) -> list[tuple[str, str, str]]:
    from ..constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT

    demo, text = DEMO_CHECKPOINT.name, DEMO_TEXT_CHECKPOINT.name
    pairs: list[tuple[str, str, str]] = [(demo, ref, decode) for decode in ("residual", "next") for ref in ("sasrec", "gru4rec", "recent-popularity")
             if demo in rows and ref in rows]
    if demo in rows and text in rows:
        pairs.append((demo, text, "next"))  # the demo's two panels: hybrid vs text-only, each by the LLM alone
    if text in rows and "recent-popularity" in rows:
        pairs.append((text, "recent-popularity", "next"))
    hybrid = [r for r in rows if "curriculum" in r or "hybrid" in r or "two-stage" in r]
    texts = [r for r in rows if "text" in r]
    for h in hybrid:
        for t in texts:
            if ("head" in h) == ("head" in t):
                pairs.append((h, t, "head" if "head" in h else "rank"))
        pairs.append((h, "sasrec", "head" if "head" in h else "rank"))
    return pairs


def plot_curves(path: Path, window: int = 15) -> Path:
    """Training loss (moving average over ``window`` steps) and p(hybrid) of every LLaRA checkpoint, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for meta_path in sorted(LLARA_DIR.glob("*/meta.json")):
        log = read_json(meta_path).get("log", [])
        if not log:
            continue
        steps = np.array([e["step"] for e in log])
        loss = np.array([e["loss"] for e in log])
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid") if len(loss) >= window else loss
        ax.plot(steps[len(steps) - len(smooth):], smooth, label=meta_path.parent.name)
        bx.plot(steps, [e["p_hybrid"] for e in log], label=meta_path.parent.name)
    ax.set(xlabel="optimizer step (4 prompts)", ylabel=f"training loss ({window}-step mean)", title="Loss (title CE + head CE where used)")
    bx.set(xlabel="optimizer step", ylabel="p(hybrid prompt)", title="Curriculum")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stored(path: Path, grp: Group) -> dict:
    """A row's JSON, checked to belong to ``grp``: rows of another stream or other samples are never mixed in."""
    row = read_json(path)
    if group(row) != (grp.stream, grp.samples):
        raise ValueError(f"{path} holds a row computed with {describe_group(*group(row))}, but this run uses "
                         f"{describe_group(grp.stream, grp.samples)}: pass the matching --candidate-stream / "
                         "--eval-samples, or --out the folder of that group")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="all", help="comma-separated rows: sasrec, gru4rec, caser, popularity, "
                        "recent-popularity, zero-shot, or LLaRA checkpoint folder names under checkpoints/llara "
                        "(default: all; with --reuse: every row stored in the group's folder)")
    parser.add_argument("--seeds", type=int, default=5, help="candidate seeds for the head and the recommenders (default: 5)")
    parser.add_argument("--gen-seeds", type=int, default=1,
                        help="candidate seeds for generate / constrained / rank, 2-6x slower per sample (default: 1)")
    parser.add_argument("--decodes", default="generate,constrained,rank,head,next,residual",
                        help="LLM columns to run, each where the checkpoint has it (default: all)")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS, help="LLM weights (default: bf16)")
    parser.add_argument("--limit", type=int, default=0, help="first N test users only (0 = all 95; a smoke test)")
    parser.add_argument("--reuse", action="store_true", help="read rows from <out>/<row>.json where present")
    parser.add_argument("--update", action="store_true", help="run the --decodes columns and merge them into a row's "
                        "existing JSON, keeping its other columns")
    parser.add_argument("--plot", type=lambda v: Path(v) if v else None, default=REPO_ROOT / "assets" / "training_curves.png",
                        help="write the training curves of the LLaRA checkpoints here ('' = no plot; default: assets/training_curves.png)")
    parser.add_argument("--out", type=Path, default=None, help="folder of the per-row JSON files (default: the group's "
                        "folder: docs/results, docs/results/shared, docs/results/release or docs/results/release-shared)")
    add_stream_arg(parser)
    add_eval_sample_args(parser)
    parser.add_argument("--allow-pickle", action="store_true", help="with --eval-samples release: read the release's "
                        "pickles (*.df) when no JSONL exists; unpickling runs code from the file, so only for files you trust")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    try:
        args.device = str(resolve_device(args.device))  # checked here: a missing GPU fails before any row runs
    except ValueError as err:
        parser.error(str(err))
    grp = Group(args.candidate_stream, args.eval_samples, args.release_dir, args.allow_pickle)
    out = args.out or grp.folder()
    available = [*RECOMMENDERS, *PRIORS, ZERO_SHOT, *sorted(q.parent.name for q in LLARA_DIR.glob("*/meta.json"))]
    rows = available if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.rows == "all" and args.reuse:  # every stored row of the group, the usual ones first
        stored = {q.stem for q in out.glob("*.json")}
        rows = [r for r in available if r in stored] + sorted(stored - set(available))
    unknown = [r for r in rows if r not in available and not (checkpoint_path(r) / "meta.json").is_file()
               and not (args.reuse and (out / f"{r}.json").is_file())]  # --reuse: a row's JSON is enough
    if unknown or args.seeds < 1 or args.gen_seeds < 1:
        parser.error(f"unknown rows {unknown}; available: {', '.join(available)}" if unknown else "--seeds and --gen-seeds must be >= 1")
    try:
        if not args.reuse:  # reprinting stored rows needs no release folder
            check_eval_sample_args(args)
        return run(args, dataclasses.replace(grp, release_dir=args.release_dir), out, rows)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, grp: Group, out: Path, rows: list[str]) -> int:
    """Run (or read) every row of one group, save each, and print the group's tables."""
    decodes = [d.strip() for d in args.decodes.split(",") if d.strip()]
    unknown = [d for d in decodes if d not in DECODERS]
    if unknown:
        raise ValueError(f"unknown --decodes {', '.join(unknown)}; choose from {', '.join(DECODES)}")
    started, results = time.perf_counter(), []
    for row in rows:
        path = out / f"{checkpoint_path(row).name if '/' in row else row}.json"
        if args.reuse and path.is_file():
            results.append(_stored(path, grp))
            continue
        previous = _stored(path, grp) if args.update and path.is_file() else None
        t0 = time.perf_counter()
        print(f"[results] {row} ...", flush=True)
        if row in RECOMMENDERS or row in PRIORS:
            result = run_baseline(row, movielens(grp), args.seeds)
        else:
            result = run_llm(row, args.seeds, args.gen_seeds, decodes, args.precision, args.limit, grp, args.device)
        result.update(grp.fields(), seconds=round(time.perf_counter() - t0, 1))
        if previous:  # --update: the columns run now replace theirs, the others are kept
            result = {**previous, **{k: v for k, v in result.items() if k != "columns"},
                      "columns": {**previous.get("columns", {}), **result["columns"]}}
        if not args.limit:  # a smoke run never overwrites the committed figures
            write_json(path, result)
        results.append(result)
    with_head = [r for r in results if r.get("kind") in ("text", "hybrid") and "scores" in r["columns"].get("head", {})]
    fused = [f for f in (fusion_row(r, movielens(grp)) for r in with_head) if f]
    results += fused
    print(f"Rows computed with {describe_group(grp.stream, grp.samples)}.\n")
    print(table(results))
    print()
    pairs = default_pairs([r["row"] for r in results]) + [(f["row"], "sasrec", "head") for f in fused]
    print(paired_table(results, list(dict.fromkeys(pairs))))
    print()
    print(personalization_table(results))
    print()
    print(training_table(results))
    if grp.samples == "release":
        ours_folder = Group(grp.stream).folder()
        ours = [_stored(q, Group(grp.stream)) for q in (ours_folder / f"{r['row']}.json" for r in results) if q.is_file()]
        print()
        print(beside_ours_table([r for r in results if r not in fused], ours))
    stored_parts = [read_json(q) for q in sorted((out / "parts").glob("*.json"))] if (out / "parts").is_dir() else []
    if stored_parts:  # written by python -m llara.parts --json <out>/parts/<row>.json
        from .parts import overview_table

        for set_name in ("positions", "paper"):
            print(f"\nPrompt parts, the LLM alone ({set_name}; python -m llara.parts):\n")
            print(overview_table(stored_parts, set_name))
    if args.plot:
        print(f"training curves: {plot_curves(args.plot)}")
    print(f"\n[results] {len(results)} rows in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
