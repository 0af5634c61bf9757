"""What each part of the prompt carries: part ablation, on the paper's protocol and on every position of the test users.

    python -m llara.parts --checkpoint checkpoints/llara/movielens-gru4rec-lang-drop-5k --json docs/results/parts.json
    python -m llara.parts --checkpoint checkpoints/llara/movielens-text-minilm-5k --positions 20 --candidate-seed 100

A hybrid prompt has up to three parts: the **titles**, the **item slots** (each watched item's projected
recommender vector) and the **user token** (the recommender's projected encoding of the whole history, where the
checkpoint has one). Each variant removes some of them: titles by rebuilding the prompt without them (the items are
listed by their slots alone), slots and the user token by giving them the model's neutral vector (the average
item, ``LLaRA.neutral_slot``; the layout is kept). Rows: the full prompt, each part removed, each part alone and
nothing; a part the checkpoint lacks is reported as absent. Every row gets HR@1 over the candidates, its paired 95%
interval against the full prompt and against the model's own recommender, and the share of top-1 answers that equal
the recommender's.

Samples: the paper's protocol (each test user's last interaction) and **all positions**: the test users never
appear in training, so every position of their sequences with >= 3 items before it is an unseen sample (history =
the last <= 10 items, the paper's rule). Intervals resample users (a cluster bootstrap), since one user's positions
are not independent. The **cold slice** keeps the samples whose target has at most ``--cold`` training interactions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import refuse_below
from ..constants import PRECISIONS
from ..data import Sample, SequenceDataset
from ..data.args import seeds_arg
from ..data.protocol import MAX_HISTORY, MIN_HISTORY, NUM_CANDIDATES, SPLIT_CODES, draw_candidates
from ..metrics import cluster_paired
from ..model.llara_model import LLaRA

PARTS = ("titles", "items", "user")
POSITIONS_STREAM = 7  # candidate generators of all-position samples: keyed (seed, 7, split code, index)


# ---- samples --------------------------------------------------------------------------------------------------

def user_sequences_of(ds: SequenceDataset, split: str) -> dict[int, list[int]]:
    """Each user's whole chronological sequence (a val/test user's own sample holds only its last <= 10 items).

    A dataset in the original release's format (LastFM) keeps no sequences: there each user's last window stands
    for it (history + target, <= 11 items; keyed by the sample's index, one user per sample), so "every position"
    means every position of that window."""
    users = ds.users.get(split) or []
    if users and all(u in ds.sequences for u in users):
        return {u: ds.sequences[u] for u in users}
    if ds.sequences:
        raise ValueError(f"the {split} users' sequences are incomplete in this {ds.name} dataset")
    return {i: [*s.history, s.target] for i, s in enumerate(ds.split(split))}


def all_position_samples(sequences: dict[int, list[int]], per_user: int = 0, seed: int = 0) -> list[Sample]:
    """Every position of every sequence with >= 3 items before it (history = the last <= 10). ``per_user`` > 0 keeps
    that many positions per user, drawn with ``seed`` (the user's last interaction always kept: it is the paper's
    sample), in sequence order."""
    out: list[Sample] = []
    for user in sorted(sequences):
        items = sequences[user]
        positions = list(range(MIN_HISTORY, len(items)))
        if per_user and len(positions) > per_user:
            rng = np.random.default_rng([seed, user])
            keep = set(rng.choice(positions[:-1], size=per_user - 1, replace=False).tolist()) | {positions[-1]}
            positions = sorted(keep)
        out += [Sample(tuple(items[max(0, t - MAX_HISTORY): t]), items[t], user) for t in positions]
    return out


def position_candidates(samples: list[Sample], ds: SequenceDataset, seed: int, split: str = "test") -> list[tuple[int, ...]]:
    """One fixed candidate set per all-position sample, from a generator keyed by (seed, stream, split, index)."""
    return [draw_candidates(s.history, s.target, ds.catalog, np.random.default_rng([seed, POSITIONS_STREAM, SPLIT_CODES[split], i]),
                            k=NUM_CANDIDATES) for i, s in enumerate(samples)]


def training_counts(ds: SequenceDataset) -> np.ndarray:
    """How often each item is a training target ``(N,)``: every interaction of a training user after its first three."""
    counts = np.zeros(ds.n_items, dtype=int)
    for s in ds.train:
        counts[s.target] += 1
    return counts


# ---- variants -------------------------------------------------------------------------------------------------

def model_parts(model: LLaRA) -> tuple[str, ...]:
    """The parts a checkpoint's hybrid prompt has (a text-only reading has the titles alone)."""
    return ("titles", "items") + (("user",) if model.builder.user_token and model.user_projector is not None else ())


def variants(parts: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Row name -> the parts removed: full, each removed, each alone, nothing (duplicates dropped, first name kept)."""
    rows: dict[str, frozenset[str]] = {"full": frozenset()}
    rows.update({f"no {p}": frozenset({p}) for p in parts})
    if len(parts) > 2:
        rows.update({f"{p} only": frozenset(parts) - {p} for p in parts})
    if len(parts) == 2:  # "no titles" is "items only": one row, named both ways
        rows = {("no titles (items only)" if k == "no titles" else "no items (titles only)" if k == "no items" else k): v
                for k, v in rows.items()}
    rows["nothing"] = frozenset(parts)
    return rows


def absent_rows(model_has: tuple[str, ...]) -> list[str]:
    return [f"no {p}" for p in PARTS if p not in model_has]


def build_variant(model: LLaRA, history: tuple[int, ...], candidates: tuple[int, ...], hybrid: bool,
                  removed: frozenset[str]):
    """The prompt of one variant, cut after its query slot (what the next-item head reads)."""
    if not hybrid:
        if removed:
            raise ValueError("a text-only prompt has one part, its titles: nothing can be removed from it")
        return model.builder.build(history, candidates, hybrid=False).truncated()
    prompt = model.builder.build(history, candidates, hybrid=True, titles="titles" not in removed)
    return prompt.without(removed - {"titles"}).truncated()


@torch.inference_mode()
def variant_scores(model: LLaRA, samples: list[Sample], candidates: list[tuple[int, ...]], hybrid: bool,
                   removed: frozenset[str], batch_size: int = 16, desc: str = "") -> np.ndarray:
    """Next-item head scores of each sample's candidates ``(B, C)`` under one variant (the LLM alone, ``next``).
    The pass reads the history alone (the prompt is cut at its query slot), so samples sharing a history (the
    paper's protocol over several candidate seeds) share one pass."""
    unique = list(dict.fromkeys(s.history for s in samples))
    rows: dict[tuple[int, ...], np.ndarray] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc=desc, leave=False, disable=not desc):
        chunk = unique[start: start + batch_size]
        # the candidates are cut off with the rest of the prompt: any valid set builds the same tokens
        prompts = [build_variant(model, h, _disjoint(h, model.builder.catalog), hybrid, removed) for h in chunk]
        scores, _ = model.all_item_scores(prompts)  # (b, N)
        rows.update(zip(chunk, scores.float().cpu().numpy()))
    return np.stack([rows[s.history][list(c)] for s, c in zip(samples, candidates)]).astype(np.float32)


def _disjoint(history: tuple[int, ...], catalog) -> tuple[int, ...]:
    """Two items outside ``history``: a stand-in candidate list for a prompt that is cut before its candidates."""
    seen = set(history)
    return tuple(i for i in range(len(seen) + 2) if i not in seen)[:2]


def hits_and_top1(scores: np.ndarray, samples: list[Sample], candidates: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: hit (the target strictly above every other candidate) and the top-1 item."""
    cands = np.asarray(candidates)
    target_col = np.array([list(c).index(s.target) for s, c in zip(samples, candidates)])
    rows = np.arange(len(samples))
    t = scores[rows, target_col]
    others = scores.copy()
    others[rows, target_col] = -np.inf
    return (t > others.max(1)).astype(float), cands[rows, scores.argmax(1)]


def summarize_rows(hits: dict[str, np.ndarray], top1: dict[str, np.ndarray], users: np.ndarray, reference: str,
                   recommender: str, mask: np.ndarray | None = None) -> dict[str, dict]:
    """Per row: HR@1 with a cluster-bootstrap 95% interval, paired differences to ``reference`` (the full prompt) and
    to ``recommender`` (full - row and row - recommender), and top-1 agreement with the recommender."""
    m = np.ones(len(users), dtype=bool) if mask is None else mask
    out = {}
    for name, h in hits.items():
        row = {"hr@1": float(h[m].mean()), "samples": int(m.sum()),
               "hr@1_ci95": cluster_paired(h[m], np.zeros(int(m.sum())), users[m])["ci95"]}
        if name != reference and reference in hits:
            row["full_minus_row"] = cluster_paired(hits[reference][m], h[m], users[m])
        if name != recommender and recommender in hits:
            row["minus_recommender"] = cluster_paired(h[m], hits[recommender][m], users[m])
            row["same_top1_as_recommender"] = float((top1[name][m] == top1[recommender][m]).mean())
        out[name] = row
    return out


# ---- the run ----------------------------------------------------------------------------------------------------

def evaluate_parts(model: LLaRA, ds: SequenceDataset, hybrid: bool, sets: dict[str, tuple[list[Sample], list]],
                   recommender=None, batch_size: int = 16, progress: bool = True,
                   only: list[str] | None = None) -> dict[str, dict]:
    """Per sample set: ``{"hits": {row: (n,)}, "top1": {row: (n,)}}`` for every variant of the prompt (the LLM alone;
    ``only``: these rows, "full" always among them), the model's recommender and recent popularity (a history-free
    prior) on the same samples and candidates."""
    from .probes import popularity

    rows = variants(model_parts(model)) if hybrid else {"full": frozenset()}
    if only:
        unknown = sorted(set(only) - set(rows))
        if unknown:
            raise ValueError(f"unknown prompt rows {unknown}; this checkpoint has: {', '.join(rows)}")
        rows = {k: v for k, v in rows.items() if k == "full" or k in only}
    # recent popularity needs each training user's own targets; the release format has no user ids (all -1): there
    # the history-free row is global popularity, named as such
    known_users = any(s.user >= 0 for s in ds.train)
    prior, prior_name = popularity(ds, recent=10 if known_users else 0), "recent popularity" if known_users else "popularity"
    out = {}
    for set_name, (samples, cands) in sets.items():
        hits, top1 = {}, {}
        for name, removed in rows.items():
            scores = variant_scores(model, samples, cands, hybrid, removed, batch_size, desc=f"{set_name}: {name}" if progress else "")
            hits[name], top1[name] = hits_and_top1(scores, samples, cands)
        if recommender is not None:
            rec = recommender.score_histories([s.history for s in samples], cands).numpy()  # (n, C)
            hits["recommender"], top1["recommender"] = hits_and_top1(rec, samples, cands)
        pop = np.array([[prior[c] for c in cs] for cs in cands], dtype=float)
        hits[prior_name], top1[prior_name] = hits_and_top1(pop, samples, cands)
        out[set_name] = {"hits": hits, "top1": top1, "users": np.array([s.user for s in samples])}
    return out


def sample_sets(ds: SequenceDataset, paper_seeds: list[int], positions: int, candidate_seed: int,
                split: str = "test") -> dict[str, tuple[list[Sample], list]]:
    """``paper``: each user's last interaction once per candidate seed; ``positions``: every position of the users
    (``positions`` > 0: that many per user), one candidate seed."""
    paper_samples, paper_cands = [], []
    # users are the bootstrap's clusters; the release format has none (-1): there a sample's index in its split
    # stands for its user (one sample per user, the same index under every candidate seed)
    users = [s if s.user >= 0 else Sample(s.history, s.target, i) for i, s in enumerate(ds.split(split))]
    for seed in paper_seeds:
        paper_samples += users
        paper_cands += ds.candidates(split, seed=seed)
    sets = {"paper": (paper_samples, paper_cands)}
    samples = all_position_samples(user_sequences_of(ds, split), per_user=positions, seed=candidate_seed)
    sets["positions"] = (samples, position_candidates(samples, ds, candidate_seed, split))
    return sets


def report(raw: dict[str, dict], ds: SequenceDataset, cold: int, sets: dict) -> dict[str, dict]:
    """Summaries of every sample set, and the cold slice of the all-position set."""
    out = {}
    for set_name, r in raw.items():
        out[set_name] = summarize_rows(r["hits"], r["top1"], r["users"], "full", "recommender" if "recommender" in r["hits"] else "")
    if "positions" in raw:
        counts = training_counts(ds)
        mask = np.array([counts[s.target] <= cold for s in sets["positions"][0]])
        if mask.any():
            r = raw["positions"]
            out["cold"] = summarize_rows(r["hits"], r["top1"], r["users"], "full", "recommender" if "recommender" in r["hits"] else "", mask)
    return out


def format_table(summary: dict[str, dict], absent: list[str]) -> str:
    """One markdown table per sample set."""
    lines = []
    for set_name, rows in summary.items():
        n = next(iter(rows.values()))["samples"]
        lines += [f"\n{set_name} ({n} samples)", "",
                  "| prompt | HR@1 (95% CI) | full − row (95% CI) | row − recommender (95% CI) | same top-1 as recommender |",
                  "|---|---|---|---|---|"]
        for name, m in rows.items():
            ci = lambda d: f"{d['diff']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})" if d else "–"  # noqa: E731
            agree = f"{m['same_top1_as_recommender']:.0%}" if "same_top1_as_recommender" in m else "–"
            lines.append(f"| {name} | {m['hr@1']:.3f} ({m['hr@1_ci95'][0]:.3f}-{m['hr@1_ci95'][1]:.3f}) | "
                         f"{ci(m.get('full_minus_row'))} | {ci(m.get('minus_recommender'))} | {agree} |")
        lines += [f"| {a} | absent (the checkpoint has no such part) | – | – | – |" for a in absent]
    return "\n".join(lines)


def overview_table(stored: list[dict], set_name: str = "positions") -> str:
    """One line per checkpoint (``python -m llara.parts --json`` outputs): what removing each part costs, the best
    part alone, agreement with the recommender and the cold slice. The standard columns of the results table."""
    head = ("| model | prompt | samples | HR@1 full | recommender | full − recommender | same top-1 | − titles | − item slots "
            "| − user token | best part alone | cold: full − recommender |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda d: f"{d['diff']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})" if d else "–"  # noqa: E731
    for r in stored:
        rows = r["summary"].get(set_name)
        if not rows:
            continue
        full = rows["full"]
        drop = {}
        for part in PARTS:
            name = next((k for k in rows if k == f"no {part}" or k.startswith(f"no {part} (")), None)
            drop[part] = "absent" if f"no {part}" in r["absent"] else fmt(rows[name].get("full_minus_row")) if name else "–"
        alone = {k: v["hr@1"] for k, v in rows.items() if k.endswith(" only") or k.endswith("only)")}
        best = max(alone, key=lambda k: alone[k]) if alone else None
        best_cell = f"{alone[best]:.3f} ({best.split('(')[-1].rstrip(')').replace(' only', '')})" if best else "–"
        cold = r["summary"].get("cold", {}).get("full", {}).get("minus_recommender") if set_name == "positions" else None
        rec = rows.get("recommender", {}).get("hr@1")
        lines.append(f"| {r['checkpoint']} | {r['prompt']} | {full['samples']} | {full['hr@1']:.3f} | "
                     f"{'–' if rec is None else f'{rec:.3f}'} | {fmt(full.get('minus_recommender'))} | "
                     f"{full.get('same_top1_as_recommender', float('nan')):.0%} | {drop['titles']} | {drop['items']} | "
                     f"{drop['user']} | {best_cell} | {fmt(cold)} |")
    return "\n".join(lines)


def stored_hits(path: Path, row: str, set_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hits, users, targets)`` of one row of a stored ``llara.evaluation.parts``, ``llara.evaluation.small_model``
    or ``llara.evaluation.written`` JSON file (a written file's rows are its decodes: a hit is a choice that names the
    target)."""
    from ..checkpoint import read_json

    d = read_json(path)
    if "choices" in d:  # llara.written: per-sample choices (null where an answer named no candidate) and targets
        choices, targets = d["choices"].get(set_name, {}).get(row), d["targets"].get(set_name)
        hits = None if choices is None else [c == t for c, t in zip(choices, targets)]
    else:
        hits = d["hits"].get(set_name, {}).get(row) if "checkpoint" in d else d["hits"].get(row, {}).get(set_name)
    if hits is None:
        raise ValueError(f"{path} has no row {row!r} on the {set_name} samples")
    users = d["users"][set_name] if "checkpoint" in d else d["samples"][set_name]["users"]
    return np.asarray(hits, dtype=float).ravel(), np.asarray(users), np.asarray(users)


def pair_stored(a: str, b: str, set_name: str = "positions") -> dict:
    """``a - b`` for two stored rows given as ``file.json:row``, checked to cover the same samples (users in order)."""
    (pa, ra), (pb, rb) = (x.rsplit(":", 1) for x in (a, b))
    ha, ua, _ = stored_hits(Path(pa), ra, set_name)
    hb, ub, _ = stored_hits(Path(pb), rb, set_name)
    if len(ha) != len(hb) or not np.array_equal(ua, ub):
        raise ValueError(f"{a} and {b} cover different samples ({len(ha)} vs {len(hb)}): rerun one with the other's "
                         "--positions and --candidate-seed")
    return {"a": a, "b": b, "a_hr@1": float(ha.mean()), "b_hr@1": float(hb.mean()), **cluster_paired(ha, hb, ua)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.parts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a LLaRA checkpoint with a next-item head (python -m llara.train --next-weight > 0)")
    source.add_argument("--pair", nargs=2, metavar="FILE.json:ROW", help="instead: the paired difference of two stored "
                        "rows (this command's, python -m llara.small_model's or python -m llara.written's --json) on "
                        "the same samples")
    parser.add_argument("--pair-set", default="positions", choices=["positions", "paper"], help="with --pair: the "
                        "sample set to compare, every position or the paper's protocol (default: %(default)s)")
    parser.add_argument("--prompt", default="auto", choices=["auto", "hybrid", "text"],
                        help="prompt kind; auto = the kind the checkpoint was trained on (default: %(default)s)")
    parser.add_argument("--positions", type=int, default=0, help="all-position samples per test user (0 = every position; default: %(default)s)")
    parser.add_argument("--candidate-seed", type=int, default=100, help="candidate seed of the all-position samples (default: %(default)s, a seed no model was developed on)")
    parser.add_argument("--paper-seeds", default="100-102", help="candidate seeds of the paper's protocol (default: %(default)s)")
    parser.add_argument("--cold", type=int, default=10, help="cold slice: targets with at most this many training interactions (default: %(default)s)")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="users to evaluate; choose recipes on val (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="weights and compute of the LLM (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per pass (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--rows", default="", help="comma-separated prompt rows to run, e.g. 'no user,user only' (the full "
                        "prompt always runs; default: every row the checkpoint has)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary, per-sample hits and the CPU here")
    args = parser.parse_args(argv)
    refuse_below(parser, (("--positions", args.positions, 0), ("--candidate-seed", args.candidate_seed, 0),
                          ("--cold", args.cold, 0), ("--batch-size", args.batch_size, 1), ("--threads", args.threads, 0)))
    seeds = seeds_arg(parser, args.paper_seeds)
    if args.pair:
        try:
            first, second = args.pair  # nargs=2
            d = pair_stored(first, second, set_name=args.pair_set)  # of whichever split the files hold
        except (ValueError, OSError, KeyError, RuntimeError) as err:  # RuntimeError: CheckpointError, a missing file
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{d['a']} ({d['a_hr@1']:.3f}) - {d['b']} ({d['b_hr@1']:.3f}): {d['diff']:+.3f} "
              f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}; {d['a_better']} samples better, {d['b_better']} worse)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..checkpoint import CheckpointError, write_json
    from ..device import cpu_info
    from ..model.loader import load_llara

    try:
        model, meta, ds = load_llara(str(args.checkpoint), precision=args.precision, merge=True)  # LoRA folded in: faster
        if model.next_head is None:
            raise ValueError(f"{args.checkpoint} has no next-item head: part ablation reads the LLM's next-item scores")
        hybrid = meta["config"].get("mode") != "text" if args.prompt == "auto" else args.prompt == "hybrid"
        sets = sample_sets(ds, seeds, args.positions, args.candidate_seed, args.split)
        only = [r.strip() for r in args.rows.split(",") if r.strip()] or None
        raw = evaluate_parts(model.eval(), ds, hybrid, sets, model.recommender, args.batch_size, only=only)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    absent = absent_rows(model_parts(model) if hybrid else ("titles",))  # a text prompt's one part: its titles
    summary = report(raw, ds, args.cold, sets)
    print(f"{Path(args.checkpoint).name}: {'hybrid' if hybrid else 'text-only'} prompt, {args.precision}, the LLM alone (next)")
    print(format_table(summary, absent))
    if args.json:
        write_json(args.json, {
            "checkpoint": Path(args.checkpoint).name, "prompt": "hybrid" if hybrid else "text", "precision": args.precision,
            "machine": cpu_info(), "paper_seeds": seeds, "candidate_seed": args.candidate_seed, "positions": args.positions,
            "positions_from": "sequences" if ds.sequences else "last windows",
            "cold_threshold": args.cold, "split": args.split, "absent": absent, "summary": summary,
            "hits": {k: {row: v.astype(int).tolist() for row, v in r["hits"].items()} for k, r in raw.items()},
            "users": {k: r["users"].tolist() for k, r in raw.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
