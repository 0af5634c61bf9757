"""Explain a LLaRA answer: how much each watched item (its title, and in a hybrid prompt its embedding slot) pushed
one candidate's answer up or down.

    python -m llara.explain --checkpoint checkpoints/llara/movielens-sasrec-curriculum \\
        --history "Toy Story|Heat|Fargo|The Good, The Bad and The Ugly|Casablanca"
    python -m llara.explain --checkpoint checkpoints/llara/movielens-sasrec-curriculum \\
        --history "Toy Story|Heat|Fargo" --candidate "Casino" --level both --json attribution.json
    python -m llara.explain --checkpoint checkpoints/llara/movielens-sasrec-curriculum \\
        --item "The Good, The Bad and The Ugly" --item "Heat" --item "Fargo" --prompt text --seed 3
    python -m llara.explain --checkpoint checkpoints/llara/movielens-sasrec-curriculum \\
        --history "Toy Story, Heat, Fargo" --sep ", " --candidates "Casino, Babe, Alien"
    python -m llara.explain --bench          # seconds per attribution, embedded SmolLM2 + committed SASRec, bf16
    python -m llara.explain --faithfulness --users 20   # deletion curves of every method, the demo's two models

Titles: ``--history`` and ``--candidates`` are split on ``--sep`` (default ``|``, because titles contain commas:
"The Good, The Bad and The Ugly"); each ``--item`` adds one history title verbatim, after those of ``--history``.
Titles match the catalog case-insensitively; an unknown one fails with suggestions. Without ``--candidates``,
20 candidates are drawn with ``--seed`` (the named ``--candidate`` among them); without ``--candidate`` the
target is the model's top-ranked candidate. As in the demo, a repeated title counts once and only the 10 most
recent titles are kept (a note says so).

Item level (default): score = logL(target | prompt) - logL(target | prompt without the part); positive = the part
made the target more likely. Token level: integrated gradients on the input embeddings, slots included.
Deletion (``--level deletion``): each watched item removed and the prompt rebuilt, scored as the model answers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..attribution.deletion import attribute_deletion
from ..attribution.methods import SLOT_BASELINES, TOKEN_METHODS, Attribution, attribute_items, attribute_tokens
from ..attribution.prompt_layout import build_prompt, check_title_lengths, resolve_item
from ..checkpoint import CheckpointError, write_json
from ..constants import MAX_SEED, PRECISIONS, RECOMMENDER_DIR
from ..device import add_device_arg, device_name, resolve_device
from ..prompt.prompts import clean_history


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump: the same shape as every other error of this command
        self.exit(2, f"error: {message} (see python -m llara.explain --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m llara.explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a LLaRA checkpoint folder (written by python -m llara.train)")
    p.add_argument("--history", default="", help="watched titles, oldest first, separated by --sep")
    p.add_argument("--item", action="append", default=[], help="one more watched title, verbatim (repeatable; commas allowed)")
    p.add_argument("--sep", default="|", help="separator of --history and --candidates (default: %(default)s)")
    p.add_argument("--candidate", default=None, help="the candidate to explain (default: the model's top-ranked one)")
    p.add_argument("--candidates", default=None, help="the candidate titles, separated by --sep (default: 20 drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn candidates (default: %(default)s)")
    p.add_argument("--prompt", default="hybrid", choices=["text", "hybrid"], help="prompt kind (default: %(default)s)")
    p.add_argument("--level", default="item", choices=["item", "token", "both", "deletion"],
                   help="which attribution: item (title / slot ablation), token (--method), both, or deletion (each "
                        "watched item removed and the prompt rebuilt; default: %(default)s)")
    p.add_argument("--method", default="ig", choices=TOKEN_METHODS, help="token-level method (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="integrated-gradients steps (default: %(default)s)")
    p.add_argument("--slot-baseline", default="mean", choices=SLOT_BASELINES, help="what replaces an ablated embedding slot: the mean projected item, or the text-only <PH> token (default: %(default)s)")
    p.add_argument("--keep-precision", action="store_true", help="compute in the model's own bf16 instead of float32: about 2x faster, but small scores are then rounding noise")
    p.add_argument("--top", type=int, default=12, help="token level: how many tokens to list (default: %(default)s)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="override the checkpoint's precision")
    p.add_argument("--json", type=Path, default=None, help="also write the attributions (to_dict) here")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--bench", action="store_true", help="time item- and token-level attribution of the embedded model on a 10-item history and exit")
    p.add_argument("--repeats", type=int, default=3, help="--bench: timed repeats, the median is reported (default: %(default)s)")
    p.add_argument("--faithfulness", action="store_true", help="deletion curves of every attribution method for the demo's "
                   "two models (or --checkpoint / --text-checkpoint) over test users, and exit "
                   "(see llara/measurement/faithfulness.py)")
    p.add_argument("--reuse", action="store_true", help="--faithfulness: reprint the table of the run saved in --json")
    p.add_argument("--users", type=int, default=20, help="--faithfulness: test users with >= 5 watched items (default: %(default)s)")
    p.add_argument("--text-checkpoint", default=None, help="--faithfulness: the text-only model (default: the demo's, "
                   "with the demo's checkpoint; else the main model answers its text-only prompt too)")
    add_device_arg(p)
    return p


def _split(text: str | None, sep: str) -> list[str]:
    return [t.strip() for t in (text or "").split(sep) if t.strip()]


def format_attribution(att: Attribution, top: int = 12) -> str:
    """A plain-text table: one row per history item; for token level also the strongest tokens."""
    if att.method == "deletion":
        what = "deletion: score = score(full) - score(prompt rebuilt without the item)"
    elif att.level == "item":
        what = "ablation: score = logL(full) - logL(part removed)"
    else:
        what = f"{att.method} on input embeddings" + (f", {att.details['n_steps']} steps" if "n_steps" in att.details else "")
    lines = [f"{att.level}-level attribution ({what}; + pushes the target up)",
             f"{'#':>3}  {'history item':40s} {'title':>9s} {'slot':>9s} {'total':>9s}"]
    for i, it in enumerate(att.items, 1):
        slot = "-" if it.embedding_score is None else f"{it.embedding_score:+.4f}"
        title = "-" if it.title_score is None else f"{it.title_score:+.4f}"
        lines.append(f"{i:>3}  {it.title[:40]:40s} {title:>9s} {slot:>9s} {it.total:+9.4f}")
    if att.level == "token":
        ranked = sorted(range(len(att.tokens)), key=lambda i: -abs(att.tokens[i].score))[:top]
        lines.append(f"strongest {len(ranked)} tokens (score in [-1, 1]):")
        for i in ranked:
            t = att.tokens[i]
            lines.append(f"  pos {i:>4}  {t.text.strip()[:24]!r:28s} {t.part:16s} {t.score:+.3f}")
        if "convergence_delta" in att.details:
            lines.append(f"IG convergence delta {att.details['convergence_delta']:+.4f} (near 0: enough steps)")
    c = att.cost
    lines.append(f"cost: forward passes {c['forward_passes']} ({c['sequences']} sequences), {c['seconds']:.2f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.loader import load_llara

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    history = _split(args.history, args.sep) + [t for t in args.item if t.strip()]
    if not history:
        raise ValueError("no history: give --history \"A|B|C\" or one --item per title")
    for what, names in (("--history/--item", history), ("--candidates", _split(args.candidates, args.sep)),
                        ("--candidate", [args.candidate or ""])):
        check_title_lengths(names, what)  # before the model loads: a refusal costs nothing
    model, _, _ = load_llara(args.checkpoint, precision=args.precision, device=resolve_device(args.device))
    catalog = model.builder.catalog
    kept, note = clean_history([resolve_item(catalog, t, f"history item {i + 1}") for i, t in enumerate(history)],
                               noun=f"{catalog.domain}s")  # the demo's policy
    prompt, target = build_prompt(model, kept, _split(args.candidates, args.sep) or None, args.candidate,
                                  hybrid=args.prompt == "hybrid", seed=args.seed)
    if note:
        print(f"note: {note}")
    results: dict[str, Attribution] = {}
    if args.level in ("item", "both"):
        results["item"] = attribute_items(model, prompt, target, slot_baseline=args.slot_baseline,
                                          upcast=not args.keep_precision)
        target = results["item"].target
    if args.level == "deletion":
        results["deletion"] = attribute_deletion(model, prompt, target)
    if args.level in ("token", "both"):
        results["token"] = attribute_tokens(model, prompt, target, method=args.method, n_steps=args.steps,
                                            slot_baseline=args.slot_baseline, upcast=not args.keep_precision)
    first = next(iter(results.values()))
    source = "the model's top-ranked candidate" if first.target_source == "model" else "named"
    print(f"target: {first.target_title} (item {first.target}, {source}); log-likelihood {first.log_likelihood:.3f}")
    print(f"prompt: {args.prompt}, {len(prompt.history)} history items, {len(prompt.candidates)} candidates, "
          f"{len(prompt.input_ids)} tokens")
    for att in results.values():
        print()
        print(format_attribution(att, args.top))
    if args.json:
        write_json(args.json, {level: att.to_dict() for level, att in results.items()})
    return 0


def bench(precision: str = "bf16", repeats: int = 3, n_steps: int = 8, device: str = "cpu") -> list[dict]:
    """Median seconds per attribution for the embedded SmolLM2 (+ LoRA, untrained: speed does not depend on the
    weights) on the first MovieLens test user with a 10-item history, 20 candidates, target named (no ranking)."""
    from ..data import load_dataset
    from ..model.build import build_llara

    ds = load_dataset("movielens")
    model = build_llara(ds, str(RECOMMENDER_DIR / ds.name / "sasrec"), precision=precision,
                        lora={"r": 8, "alpha": 32, "dropout": 0.1}, device=device).eval()
    index = next(i for i, s in enumerate(ds.test) if len(s.history) == 10)
    sample, cands = ds.test[index], ds.candidates("test", seed=0)[index]
    prompts = {kind: model.builder.build(sample.history, cands, hybrid=kind == "hybrid", template=0) for kind in ("hybrid", "text")}
    jobs = [("item (ablation)", "hybrid", lambda p: attribute_items(model, p, sample.target)),
            ("item (ablation, bf16 compute)", "hybrid", lambda p: attribute_items(model, p, sample.target, upcast=False)),
            ("item (ablation)", "text", lambda p: attribute_items(model, p, sample.target)),
            (f"token (ig, {n_steps} steps)", "hybrid", lambda p: attribute_tokens(model, p, sample.target, n_steps=n_steps)),
            ("token (grad x input)", "hybrid", lambda p: attribute_tokens(model, p, sample.target, method="grad_x_input")),
            ("rank (model's choice, reference)", "hybrid", lambda p: model.rank(p))]
    model.rank(prompts["hybrid"])  # warm-up: the first call pays for allocations and kernel selection
    rows: list[dict[str, Any]] = []
    for name, kind, fn in jobs:
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn(prompts[kind])
            times.append(time.perf_counter() - start)
        cost = out.cost if isinstance(out, Attribution) else {"forward_passes": 2, "sequences": 1 + len(cands)}
        parts = [v for it in out.items for v in (it.title_score, it.embedding_score) if v is not None] \
            if isinstance(out, Attribution) and out.level == "item" else []
        rows.append({"attribution": name, "prompt": kind, "tokens": len(prompts[kind].input_ids),
                     "forward_passes": cost["forward_passes"], "sequences": cost["sequences"],
                     "median_s": statistics.median(times), "runs_s": times, "item_part_scores": parts})
    # how far bf16 compute moves the item scores from the float32 ones (same weights, same prompt)
    exact, fast = rows[0]["item_part_scores"], rows[1]["item_part_scores"]
    rows[1]["max_abs_diff_vs_float32"] = max(abs(a - b) for a, b in zip(exact, fast))
    rows[0]["max_abs_score"] = max(abs(a) for a in exact)
    return rows


def faithfulness(args: argparse.Namespace) -> int:
    """``--faithfulness``: the deletion-curve table of every method, for the demo's models unless told otherwise."""
    import torch

    from ..checkpoint import portable_path
    from ..constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT
    from ..serving.inference import Predictor
    from .faithfulness import DeletionCurves, deletion_curves, format_curves

    if args.users < 1:
        raise ValueError("--users must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(DEMO_CHECKPOINT)
    text = args.text_checkpoint or (str(DEMO_TEXT_CHECKPOINT) if checkpoint == str(DEMO_CHECKPOINT) else None)
    if args.reuse:  # reprint a saved run
        if not args.json or not args.json.is_file():
            raise ValueError("--reuse needs --json naming a saved --faithfulness run")
        saved = json.loads(args.json.read_text())
        curves = DeletionCurves.from_dict(saved["curves"])
        checkpoint, text = saved["checkpoint"], saved["text_checkpoint"]
    else:
        predictor = Predictor.load(checkpoint, precision=args.precision or "nf4", text_checkpoint=text)
        curves = deletion_curves(predictor, users=args.users, seed=args.seed)
    print(f"{Path(checkpoint).name} (text-only prompt: {Path(text).name if text else 'the same model'}), "
          f"{args.precision or 'nf4'}, {curves.users} test users")
    print("mean drop of the explained answer's score (log-softmax over the candidates) after deleting k watched items:")
    print(format_curves(curves))
    if args.json and not args.reuse:
        write_json(args.json, {"checkpoint": portable_path(checkpoint), "text_checkpoint": text and portable_path(text),
                               "precision": args.precision or "nf4", "rows": curves.table(), "curves": curves.to_dict()})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.bench:
            import torch

            if args.repeats < 1:
                raise ValueError("--repeats must be >= 1")
            if args.threads > 0:
                torch.set_num_threads(args.threads)
            device = resolve_device(args.device)
            rows = bench(args.precision or "bf16", args.repeats, args.steps, device=str(device))
            print(f"torch {torch.__version__}, {device_name(device)}, {torch.get_num_threads()} threads, "
                  f"{args.precision or 'bf16'}, median of {args.repeats}")
            print("| attribution | prompt | tokens | forward passes | sequences | seconds |\n|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['attribution']} | {r['prompt']} | {r['tokens']} | {r['forward_passes']} | {r['sequences']} | {r['median_s']:.2f} |")
            print(f"\nitem scores: largest |score| {rows[0]['max_abs_score']:.3f} nats (float32); bf16 compute moves them "
                  f"by up to {rows[1]['max_abs_diff_vs_float32']:.3f}")
            if args.json:
                write_json(args.json, {"results": rows})
            return 0
        if args.faithfulness:
            return faithfulness(args)
        if not args.checkpoint:
            raise ValueError("--checkpoint is required (or --bench, --faithfulness)")
        if not args.sep:
            raise ValueError("--sep must not be empty")
        if args.steps < 1:
            raise ValueError("--steps must be >= 1")
        if not 0 <= args.seed <= MAX_SEED:
            raise ValueError(f"--seed must be a whole number from 0 to {MAX_SEED:,}, got {args.seed}")
        return run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
