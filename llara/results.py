"""The MovieLens results table (docs/results.md), regenerated from the committed checkpoints.

    python -m llara.results                                  # every row (see docs/results.md for the wall time)
    python -m llara.results --rows sasrec,gru4rec,caser      # just the recommenders (seconds)
    python -m llara.results --reuse                          # rebuild the table from docs/results/*.json only

    python -m llara.results --rows path/to/checkpoint               # any LLaRA checkpoint folder, by path

Rows: the three committed recommenders, the history-free priors (global and recent popularity), the untrained
base LLM (zero-shot, text prompt) and every LLaRA checkpoint under checkpoints/llara/ or given by path (its own
prompt kind: text for a text-only run, hybrid otherwise). Columns: ValidRatio / HitRatio@1 of greedy generation
(the paper's protocol) and of constrained decoding, HR@1 / NDCG@5 of ``rank`` (title likelihood), of the candidate
``head``, of the ``next``-item head and of ``residual`` scoring where a checkpoint has them. Every scored column is
also probed for personalization (llara/probes.py): the history swap test and the genre probe. Every model sees the same
95 test users and the same candidate sets (seeds 0..N-1), so differences are paired: the table ends with paired
bootstrap intervals of HR@1 differences. One row's figures and per-user records go to docs/results/<row>.json,
which ``--reuse`` reads instead of running the row again.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import REPO_ROOT, read_json, write_json
from .constants import LLARA_DIR, RECOMMENDER_DIR
from .metrics import bootstrap_ci, mean_std, ranking_metrics, target_ranks

OUT_DIR = REPO_ROOT / "docs" / "results"
RECOMMENDERS = ("sasrec", "gru4rec", "caser")
PRIORS = {"popularity": 0, "recent-popularity": 10}  # history-free rows: counts of all / the last 10 training targets
ZERO_SHOT = "zero-shot"
# Paper Table 2 (MovieLens, Llama2-7B): ValidRatio / HitRatio@1 of greedy generation.
PAPER = {
    "GRU4Rec": (1.0, 0.3750), "Caser": (1.0, 0.3861), "SASRec": (1.0, 0.3444), "Llama2-7B zero-shot": (0.4421, 0.0421),
    "TALLRec (text-only LoRA)": (0.9263, 0.3895), "LLaRA (SASRec), curriculum": (0.9684, 0.4421),
}
PAPER_ABLATION = {"always hybrid": 0.4211, "two-stage": 0.4316, "curriculum": 0.4421}  # HR@1, Table 3


@functools.cache
def movielens():
    """The paper's MovieLens split, loaded once per run (every row and the fusion rows share it)."""
    from .data import load_dataset

    return load_dataset("movielens")


def _per_user(records: list[list[dict]]) -> list[float]:
    return np.mean([[float(r["hit"]) for r in recs] for recs in records], axis=0).round(4).tolist()


def run_baseline(name: str, ds, seeds: int) -> dict:
    """A recommender or a history-free prior: ranked like the LLM rows, and probed the same way."""
    from .probes import popularity, prior_scorer, recommender_scorer
    from .evaluate import probe_row
    from .recommenders import load_recommender

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


def run_llm(row: str, seeds: int, gen_seeds: int, decodes: list[str], precision: str, limit: int = 0) -> dict:
    """Evaluate one LLM row with ``llara.evaluate``'s functions; per-user hits kept for paired comparisons."""
    from .evaluate import SCORED, evaluate_samples, llm_scorer, probe_row, summarize
    from .model import available
    from .loader import load_llara
    from .model import build_llara

    if row == ZERO_SHOT:
        ds = movielens()
        model = build_llara(ds, str(RECOMMENDER_DIR / ds.name / "sasrec"), precision=precision).eval()
        kind, meta = "text", {"config": {"mode": "zero-shot"}}
    else:
        model, meta, ds = load_llara(str(checkpoint_path(row)), precision=precision)
        kind = "text" if meta.get("config", {}).get("mode") == "text" else "hybrid"
        row = checkpoint_path(row).name
    samples = ds.split("test")[: limit or None]
    out: dict = {"row": row, "kind": kind, "precision": precision, "config": meta.get("config", {}),
                 "training": {k: meta[k] for k in ("step", "total_steps", "train_seconds", "samples_per_second", "peak_rss_mb")
                              if k in meta}, "columns": {}}
    for decode in decodes:
        if not available(model, decode):
            continue
        n = seeds if decode in ("head", "next", "residual") else gen_seeds  # one pass per sample: all seeds; the slow decodes: fewer
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
        if decode in SCORED:  # personalization: swap test and genre probe, on the same users and candidate seeds
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
    from .recommenders import load_recommender
    from .recommenders.trainer import candidate_scores

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
    return {"row": f"{llm['row']} + {recommender} fusion (w={best:g} from val)", "kind": llm["kind"], "columns": {"head": {
        "seeds": len(per_seed), "valid_ratio": 1.0, "hr@1": mean, "hr@1_std": std, "hr@1_ci95": bootstrap_ci(per_user),
        "per_user": per_user.round(4).tolist(), "val_hr@1_by_weight": {str(w): round(v, 4) for w, v in val.items()}}}}


def _cell(col: dict | None, key: str, valid: bool = False) -> str:
    if not col or key not in col:
        return "–"
    mean, std = col[key], col.get(key + "_std", 0.0)
    text = f"{mean:.3f} ± {std:.3f}" if col.get("seeds", 1) > 1 else f"{mean:.3f}"
    if valid:
        return f"{col['valid_ratio']:.3f} / {text}"
    return text


def table(results: list[dict]) -> str:
    """Markdown: one row per model; generate/constrained as ValidRatio / HR@1, rank/head as HR@1 and NDCG@5."""
    lines = ["| model | prompt | generate VR / HR@1 | constrained VR / HR@1 | rank HR@1 | rank NDCG@5 | head HR@1 | head NDCG@5 | HR@1 95% CI (users) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["columns"]
        best = c.get("head") or c.get("rank")
        ci = f"{best['hr@1_ci95'][0]:.3f}–{best['hr@1_ci95'][1]:.3f}" if best else "–"
        lines.append(f"| {r['row']} | {r['kind']} | {_cell(c.get('generate'), 'hr@1', True)} | "
                     f"{_cell(c.get('constrained'), 'hr@1', True)} | {_cell(c.get('rank'), 'hr@1')} | "
                     f"{_cell(c.get('rank'), 'ndcg@5')} | {_cell(c.get('head'), 'hr@1')} | {_cell(c.get('head'), 'ndcg@5')} | {ci} |")
    lines += ["", "Paper (Llama2-7B, MovieLens, greedy generation, ValidRatio / HR@1): "
              + "; ".join(f"{k} {v[0]:.4f} / {v[1]:.4f}" for k, v in PAPER.items())
              + ". Paper ablation (HR@1): " + ", ".join(f"{k} {v:.4f}" for k, v in PAPER_ABLATION.items()) + "."]
    return "\n".join(lines)


def paired_table(results: list[dict], pairs: list[tuple[str, str, str]]) -> str:
    """``a - b`` HR@1 on the same users and candidates, with a bootstrap 95% interval over users."""
    from .probes import paired

    by_row = {r["row"]: r for r in results}
    lines = ["| comparison (same users, same candidates) | decode | HR@1 difference | 95% CI | users a better / b better |",
             "|---|---|---|---|---|"]
    for a, b, decode in pairs:
        ca = by_row.get(a, {}).get("columns", {}).get(decode) or by_row.get(a, {}).get("columns", {}).get("rank")
        cb = by_row.get(b, {}).get("columns", {}).get(decode) or by_row.get(b, {}).get("columns", {}).get("rank")
        if not ca or not cb or len(ca["per_user"]) != len(cb["per_user"]):
            continue
        c = paired(ca["per_user"], cb["per_user"])
        lines.append(f"| {a} − {b} | {decode} | {c['diff']:+.3f} | {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f} | "
                     f"{c['a_better']} / {c['b_better']} |")
    return "\n".join(lines)


def personalization_table(results: list[dict], references: tuple[str, ...] = ("sasrec", "recent-popularity")) -> str:
    """One line per scored column: HR@1, the swap test, the genre probe, and paired differences with the
    references (same users, same candidate seeds)."""
    from .probes import paired

    by_row = {r["row"]: r for r in results}
    ref_cols = {name: by_row[name]["columns"]["rank"] for name in references if name in by_row}
    head = ("| model | prompt | decode | HR@1 | 95% CI | swap: HR@1 | swap: choices kept | genre: in-genre min / mean | "
            "genre: distinct answers | " + " | ".join(f"− {n} (95% CI; users +/−)" for n in ref_cols) + " |")
    lines = [head, "|" + "---|" * (9 + len(ref_cols))]
    for r in results:
        for decode, col in r["columns"].items():
            probe = col.get("probe")
            if not probe:
                continue
            swap, genre = probe.get("swap", {}), probe.get("genre", {})
            cells = []
            for name, ref in ref_cols.items():
                if r["row"] == name or len(ref["per_user"]) != len(col["per_user"]) or ref.get("seeds") != col.get("seeds"):
                    cells.append("–")
                    continue
                c = paired(col["per_user"], ref["per_user"])
                cells.append(f"{c['diff']:+.3f} ({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}; {c['a_better']}/{c['b_better']})")
            lo, hi = col["hr@1_ci95"]
            lines.append(f"| {r['row']} | {r['kind']} | {decode} | {col['hr@1']:.3f} ± {col.get('hr@1_std', 0):.3f} | "
                         f"{lo:.3f}–{hi:.3f} | {swap.get('hr@1', float('nan')):.3f} | {swap.get('kept', float('nan')):.0%} | "
                         f"{genre.get('min_in_genre', float('nan')):.0%} / {genre.get('mean_in_genre', float('nan')):.0%} | "
                         f"{genre.get('distinct_top_answers', '–')} of {len(genre.get('genres', {}))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_pairs(rows: list[str]) -> list[tuple[str, str, str]]:
    from .constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT

    demo, text = DEMO_CHECKPOINT.name, DEMO_TEXT_CHECKPOINT.name
    pairs = [(demo, ref, decode) for decode in ("residual", "next") for ref in ("sasrec", "gru4rec", "recent-popularity")
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


def training_table(results: list[dict]) -> str:
    lines = ["| run | recommender | mode | losses (weights) | levers | prompts (steps × batch) | wall time | samples/s | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, c = r.get("training") or {}, r.get("config") or {}
        if not t:
            continue
        weights = {"title": c.get("title_weight", 1.0), "head": c.get("head_weight", 0.0), "next-item": c.get("next_weight", 0.0),
                   "distill": c.get("distill_weight", 0.0)}  # runs saved before a weight existed did not use it
        losses = ", ".join(f"{name} {w:g}" for name, w in weights.items() if w)
        levers = ", ".join(name for name, on in (("user token", c.get("user_token")), ("dense", c.get("next_weight") and c.get("dense", True)),
                                                 ("residual", c.get("residual")), ("title items", c.get("text_items"))) if on) or "–"
        steps, batch = t.get("step", 0), c.get("batch_size", 0)
        lines.append(f"| {r['row']} | {c.get('recommender', '–')} | {c.get('mode')} | {losses} | {levers} | {steps * batch:,} ({steps} × {batch}) | "
                     f"{t.get('train_seconds', 0) / 60:.1f} min | {t.get('samples_per_second', 0):.2f} | "
                     f"{t.get('peak_rss_mb', 0) / 1024:.1f} GB |")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="all", help="comma-separated rows: sasrec, gru4rec, caser, zero-shot, "
                        "or LLaRA checkpoint folder names under checkpoints/llara (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="candidate seeds for the head and the recommenders (default: 5)")
    parser.add_argument("--gen-seeds", type=int, default=1,
                        help="candidate seeds for generate / constrained / rank, 2-6x slower per sample (default: 1)")
    parser.add_argument("--decodes", default="generate,constrained,rank,head,next,residual",
                        help="LLM columns to run, each where the checkpoint has it (default: all)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "nf4"], help="LLM weights (default: bf16)")
    parser.add_argument("--limit", type=int, default=0, help="first N test users only (0 = all 95; a smoke test)")
    parser.add_argument("--reuse", action="store_true", help="read rows from docs/results/<row>.json where present")
    parser.add_argument("--update", action="store_true", help="run the --decodes columns and merge them into a row's "
                        "existing JSON, keeping its other columns")
    parser.add_argument("--plot", type=lambda v: Path(v) if v else None, default=REPO_ROOT / "assets" / "training_curves.png",
                        help="write the training curves of the LLaRA checkpoints here ('' = no plot; default: assets/training_curves.png)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the per-row JSON files (default: docs/results)")
    args = parser.parse_args(argv)
    available = [*RECOMMENDERS, *PRIORS, ZERO_SHOT, *sorted(q.parent.name for q in LLARA_DIR.glob("*/meta.json"))]
    rows = available if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in available and not (checkpoint_path(r) / "meta.json").is_file()
               and not (args.reuse and (args.out / f"{r}.json").is_file())]  # --reuse: a row's JSON is enough
    if unknown or args.seeds < 1 or args.gen_seeds < 1:
        parser.error(f"unknown rows {unknown}; available: {', '.join(available)}" if unknown else "--seeds and --gen-seeds must be >= 1")
    decodes = [d.strip() for d in args.decodes.split(",") if d.strip()]
    started, results = time.perf_counter(), []
    for row in rows:
        path = args.out / f"{checkpoint_path(row).name if '/' in row else row}.json"
        if args.reuse and path.is_file():
            results.append(read_json(path))
            continue
        previous = read_json(path) if args.update and path.is_file() else None
        t0 = time.perf_counter()
        print(f"[results] {row} ...", flush=True)
        if row in RECOMMENDERS or row in PRIORS:
            result = run_baseline(row, movielens(), args.seeds)
        else:
            result = run_llm(row, args.seeds, args.gen_seeds, decodes, args.precision, args.limit)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        if previous:  # --update: the columns run now replace theirs, the others are kept
            result = {**previous, **{k: v for k, v in result.items() if k != "columns"},
                      "columns": {**previous.get("columns", {}), **result["columns"]}}
        if not args.limit:  # a smoke run never overwrites the committed figures
            write_json(path, result)
        results.append(result)
    fused = [f for f in (fusion_row(r, movielens()) for r in results if r.get("kind") in ("text", "hybrid")) if f]
    results += fused
    print(table(results))
    print()
    pairs = default_pairs([r["row"] for r in results]) + [(f["row"], "sasrec", "head") for f in fused]
    print(paired_table(results, list(dict.fromkeys(pairs))))
    print()
    print(personalization_table(results))
    print()
    print(training_table(results))
    if args.plot:
        print(f"training curves: {plot_curves(args.plot)}")
    print(f"\n[results] {len(results)} rows in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
