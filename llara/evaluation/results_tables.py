"""The Markdown tables of ``python -m llara.results``, built from row dictionaries (docs/results/<row>.json).

Rows are compared only within one *group*: the same candidate stream (``candidate_stream``; rows written before
the field existed used the ``shared`` stream) and the same val/test samples (``eval_samples``: ``ours`` or
``release``, the paper's exact samples). Across groups the users' candidates or samples differ, so a paired
difference would mean nothing; such pairs are left out.
"""
from __future__ import annotations

from ..paper import MOVIELENS_TABLE2 as PAPER
from ..paper import PROMPT_ABLATION_HR1 as PAPER_ABLATION
from .probes import paired

STREAM_OF_UNLABELLED_ROWS = "shared"  # rows saved before the candidate stream was recorded used the earlier stream
PAPER_SAMPLES = "the paper's exact test samples"


def group(row: dict) -> tuple[str, str]:
    """``(candidate stream, eval samples)`` of a row: only rows of one group share users and candidate sets."""
    return row.get("candidate_stream", STREAM_OF_UNLABELLED_ROWS), row.get("eval_samples", "ours")


def describe_group(stream: str, samples: str) -> str:
    """One line naming what a group's rows were computed on."""
    draws = ("generators keyed by (seed, split, index)" if stream == "split"
             else "the earlier generators keyed by (seed, index), shared by val and test")
    where = (f"{PAPER_SAMPLES} (the original release's rows)" if samples == "release"
             else "our samples of the paper's test users")
    return f"candidate stream '{stream}' ({draws}); {where}"


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
    by_row = {r["row"]: r for r in results}
    lines = ["| comparison (same users, same candidates) | decode | HR@1 difference | 95% CI | users a better / b better |",
             "|---|---|---|---|---|"]
    for a, b, decode in pairs:
        ca = by_row.get(a, {}).get("columns", {}).get(decode) or by_row.get(a, {}).get("columns", {}).get("rank")
        cb = by_row.get(b, {}).get("columns", {}).get(decode) or by_row.get(b, {}).get("columns", {}).get("rank")
        if not ca or not cb or len(ca["per_user"]) != len(cb["per_user"]) or group(by_row[a]) != group(by_row[b]):
            continue
        c = paired(ca["per_user"], cb["per_user"])
        lines.append(f"| {a} − {b} | {decode} | {c['diff']:+.3f} | {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f} | "
                     f"{c['a_better']} / {c['b_better']} |")
    return "\n".join(lines)


def personalization_table(results: list[dict], references: tuple[str, ...] = ("sasrec", "recent-popularity")) -> str:
    """One line per scored column: HR@1, the swap test, the genre probe, and paired differences with the
    references (same users, same candidate seeds)."""
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
                if (r["row"] == name or len(ref["per_user"]) != len(col["per_user"]) or ref.get("seeds") != col.get("seeds")
                        or group(r) != group(by_row[name])):
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


def beside_ours_table(release: list[dict], ours: list[dict]) -> str:
    """Each row's HR@1 and swap test on the paper's exact test samples beside the same row on ours (same candidate
    stream). Not paired: a user's sample differs between the two sides for most users."""
    mine = {(r["row"], group(r)[0]): r for r in ours if group(r)[1] == "ours"}
    lines = [f"| model | decode | HR@1, our samples | HR@1, {PAPER_SAMPLES} | difference | swap kept, ours / the paper's |",
             "|---|---|---|---|---|---|"]
    for r in release:
        other = mine.get((r["row"], group(r)[0]))
        for decode, col in r["columns"].items():
            theirs = (other or {}).get("columns", {}).get(decode)
            kept = col.get("probe", {}).get("swap", {}).get("kept")
            kept_ours = (theirs or {}).get("probe", {}).get("swap", {}).get("kept")
            lines.append(f"| {r['row']} | {decode} | {_cell(theirs, 'hr@1')} | {_cell(col, 'hr@1')} | "
                         + (f"{col['hr@1'] - theirs['hr@1']:+.3f}" if theirs else "–") + " | "
                         + (f"{kept_ours:.0%}" if kept_ours is not None else "–") + " / "
                         + (f"{kept:.0%}" if kept is not None else "–") + " |")
    return "\n".join(lines)
