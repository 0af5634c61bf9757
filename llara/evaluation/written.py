"""What the LLM writes: a checkpoint's title decodes beside its next-item head, on the paper's protocol and on
every position of the test users.

    python -m llara.written --checkpoint checkpoints/llara/movielens-gru4rec-lang-follow \\
        --reference checkpoints/llara/movielens-gru4rec-lang-5k --positions 5 \\
        --json docs/results/written/movielens-gru4rec-lang-follow.json

The paper's LLaRA answers in words: greedy generation (``generate``) writes a title, valid when it names a
candidate. Rows, one per decode the checkpoint offers: ``next`` (the next-item head, the LLM alone), ``generate``,
``constrained`` (greedy over the candidate titles only) and ``rank`` (the candidates ordered by their titles'
likelihood). A checkpoint that answers with a candidate's letter (``--answer index*``) also gets ``letter``: the
same unconstrained greedy answers as ``generate``, read by the letter they open with instead of the title they
write (LlamaRec's verbalized index), so the two readings of one answer can disagree. Each row: HR@1 with a 95%
interval (users resampled), ValidRatio, and how often its answer is the next-item head's own top-1 ("same as
next"). ``--reference`` adds the paired difference of this checkpoint's ``next`` HR@1 against another checkpoint's
(e.g. the ranking-only model it was trained from) on the same samples, to show that learning to write did not cost
ranking quality.

Samples (``llara.parts``): ``paper``, each test user's last interaction once per candidate seed; ``positions``,
up to ``--positions`` positions per test user with one candidate seed (users never seen in training).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import refuse_below
from ..constants import PRECISIONS
from ..data.args import seeds_arg
from ..metrics import cluster_paired, match_letter
from ..model.decoders import offered
from ..model.follow import written_agrees

DECODES = ("next", "generate", "constrained", "rank")


def decode_rows(model, sets: dict, hybrid: bool, decodes: tuple[str, ...], batch_size: int) -> dict[str, dict]:
    """Per sample set and decode: ``{"choice": [...], "hit": (n,), "valid": (n,)}`` (choice None = invalid)."""
    from .evaluate import evaluate_samples

    out: dict[str, dict] = {}
    for set_name, (samples, cands) in sets.items():
        out[set_name] = {}
        for decode in decodes:
            records = evaluate_samples(model, samples, cands, hybrid, decode, batch_size, progress=True,
                                       desc=f"{set_name}: {decode}")
            out[set_name][decode] = choice_row([r["choice"] for r in records], samples)
            if decode == "generate":
                out[set_name][decode]["answer"] = [r.get("answer", "") for r in records]
                if getattr(model.builder, "indexed", False):
                    out[set_name]["letter"] = letter_row(out[set_name][decode]["answer"], cands, samples)
    return out


def choice_row(choice: list[int | None], samples: list) -> dict:
    """A decode's row from its per-sample choices (None = invalid): ``{"choice", "hit": (n,), "valid": (n,)}``."""
    return {"choice": choice, "hit": np.array([c is not None and c == s.target for c, s in zip(choice, samples)], dtype=float),
            "valid": np.array([c is not None for c in choice], dtype=float)}


def letter_row(answers: list[str], cands: list[tuple[int, ...]], samples: list) -> dict:
    """The ``letter`` reading of generated answers: the candidate each answer's opening letter labels."""
    from ..prompt.prompts import INDEX_LABELS

    picks = [match_letter(a, INDEX_LABELS, len(c)) for a, c in zip(answers, cands)]
    return choice_row([None if i is None else c[i] for i, c in zip(picks, cands)], samples)


def summarize(rows: dict[str, dict], users: np.ndarray, reference: dict | None = None) -> dict[str, dict]:
    """HR@1 (95% interval), ValidRatio and "same as next" per decode; ``reference``: another model's ``next`` row
    on the same samples, compared with this model's ``next``."""
    out: dict[str, dict] = {}
    zeros = np.zeros(len(users))
    for decode, r in rows.items():
        row = {"hr@1": float(r["hit"].mean()), "hr@1_ci95": cluster_paired(r["hit"], zeros, users)["ci95"],
               "valid_ratio": float(r["valid"].mean()), "samples": len(users)}
        if "next" in rows:
            row["same_as_next"] = written_agrees(r["choice"], rows["next"]["choice"])
        out[decode] = row
    if reference is not None and "next" in rows:
        out["next"]["minus_reference"] = cluster_paired(rows["next"]["hit"], reference["hit"], users)
    return out


def training_check(model, meta: dict, ds, n: int) -> dict:
    """``llara.model.follow.follow_check`` on the first ``n`` training prompts of the checkpoint's own run (same seed,
    samples and candidates as it drew them, at its last step)."""
    from ..model.follow import follow_check
    from ..training.train_config import TrainConfig
    from ..training.train_stream import PromptStream, select_samples

    cfg = TrainConfig(**meta["config"])
    stream = PromptStream(model, select_samples(ds.train, cfg.max_train_samples, cfg.sample_strategy, cfg.seed), cfg,
                          meta["total_steps"])
    prompts = [stream.prompt(g, meta["total_steps"] - 1) for g in range(n)]
    return follow_check(model, prompts, cfg.follow_top or 8)


def format_table(summary: dict[str, dict], reference: str = "") -> str:
    lines = ["| decode | HR@1 (95% CI) | ValidRatio | same as next |", "|---|---|---|---|"]
    for decode, r in summary.items():
        lo, hi = r["hr@1_ci95"]
        same = f"{r['same_as_next']:.0%}" if "same_as_next" in r else "–"
        lines.append(f"| {decode} | {r['hr@1']:.3f} ({lo:.3f}-{hi:.3f}) | {r['valid_ratio']:.3f} | {same} |")
    if "minus_reference" in summary.get("next", {}):
        d = summary["next"]["minus_reference"]
        lines.append(f"\nnext - {reference} next: {d['diff']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.written", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a LLaRA checkpoint trained with the title loss")
    parser.add_argument("--reference", default="", help="another checkpoint whose next-item head is compared with this "
                        "one's on the same samples (paired), e.g. the ranking-only model (default: none)")
    parser.add_argument("--decodes", default=",".join(DECODES),
                        help="comma-separated decodes to run, among those the checkpoint offers (default: %(default)s)")
    parser.add_argument("--positions", type=int, default=5, help="all-position samples per test user (0 = every "
                        "position; default: %(default)s)")
    parser.add_argument("--candidate-seed", type=int, default=100, help="candidate seed of the all-position samples "
                        "(default: %(default)s)")
    parser.add_argument("--paper-seeds", default="100-102", help="candidate seeds of the paper's protocol (default: %(default)s)")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="users to evaluate (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="weights and compute of the LLM (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per pass (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--follow-check", type=int, default=0, help="also, on this many of the checkpoint's own training "
                        "prompts (as its run drew them): the follow loss of the model beside what a uniform student "
                        "gets (did the words learn the head's order?); 0 = skip (default)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary, per-sample answers and the CPU here")
    args = parser.parse_args(argv)
    refuse_below(parser, (("--positions", args.positions, 0), ("--batch-size", args.batch_size, 1),
                          ("--threads", args.threads, 0), ("--follow-check", args.follow_check, 0)))
    seeds = seeds_arg(parser, args.paper_seeds)
    from ..checkpoint import CheckpointError, write_json
    from ..device import cpu_info
    from ..model.loader import load_llara
    from .parts import sample_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = tuple(d.strip() for d in args.decodes.split(",") if d.strip())
    try:
        model, meta, ds = load_llara(args.checkpoint, precision=args.precision, merge=True)
        have = offered(model)
        missing = [d for d in wanted if d not in have]
        if missing:
            raise ValueError(f"{args.checkpoint} does not offer {', '.join(missing)}; it offers {', '.join(have)}")
        hybrid = meta["config"].get("mode") != "text"
        sets = sample_sets(ds, seeds, args.positions, args.candidate_seed, args.split)
        rows = decode_rows(model.eval(), sets, hybrid, wanted, args.batch_size)
        check = training_check(model, meta, ds, args.follow_check) if args.follow_check else None
        ref_rows = None
        if args.reference:
            del model  # one model in memory at a time
            ref, _, _ = load_llara(args.reference, dataset=ds, precision=args.precision, merge=True)
            ref_rows = decode_rows(ref.eval(), sets, hybrid, ("next",), args.batch_size)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ref_name = Path(args.reference).name if args.reference else ""
    if check:
        print(f"follow check on {check['prompts']} training prompts: the head's entropy over its top "
              f"{check['top']} {check['teacher_entropy']:.3f} nats; KL a uniform student gets {check['kl_uniform']:.3f}, "
              f"this model's KL {check['kl_model']:.3f}")
    summary = {}
    for set_name, (samples, _) in sets.items():
        users = np.array([s.user for s in samples])
        summary[set_name] = summarize(rows[set_name], users, ref_rows[set_name]["next"] if ref_rows else None)
        print(f"\n{Path(args.checkpoint).name}, {set_name} ({len(samples)} samples, {args.precision}):")
        print(format_table(summary[set_name], ref_name))
    if args.json:
        write_json(args.json, {
            "checkpoint": Path(args.checkpoint).name, "reference": ref_name, "precision": args.precision,
            "machine": cpu_info(), "paper_seeds": seeds, "candidate_seed": args.candidate_seed,
            "positions": args.positions, "split": args.split, "summary": summary, "follow_check": check,
            "choices": {k: {d: r["choice"] for d, r in v.items()} for k, v in rows.items()},
            "answers": {k: v["generate"]["answer"] for k, v in rows.items() if "generate" in v},
            "targets": {k: [s.target for s in samples] for k, (samples, _) in sets.items()},
            "users": {k: [s.user for s in samples] for k, (samples, _) in sets.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
