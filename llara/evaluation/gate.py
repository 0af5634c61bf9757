"""Residual scoring for a checkpoint trained without it: fit the one gate of ``recommender + gate * LLM`` afterwards.

    python -m llara.gate --checkpoint checkpoints/llara/movielens-gru4rec-lang-drop-5k --positions 10

``--residual`` in training learns the gate jointly, and its loss then also shapes what the LLM learns (towards
correcting the recommender rather than answering alone). A model trained for its LLM alone can still offer the
residual decode: with the LLM and its next-item head frozen, one scalar is fitted by full-catalog cross-entropy of
``rec_scores + gate * llm_scores`` on the **validation** users (every position of their sequences, or ``--positions``
per user: users no model was trained on, never the test users). The checkpoint is rewritten in place (atomically)
with the gate, ``config.residual`` set and ``residual_gate`` in meta.json saying how it was fitted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..model.llara_model import LLaRA


def fit_gate(llm_scores: torch.Tensor, rec_scores: torch.Tensor, targets: torch.Tensor, steps: int = 100) -> float:
    """The gate ``g`` minimising the cross-entropy of ``rec + g * llm`` over the catalog: ``(n, N), (n, N), (n,)``."""
    if llm_scores.shape != rec_scores.shape or llm_scores.shape[0] != targets.shape[0] or targets.numel() == 0:
        raise ValueError(f"scores {tuple(llm_scores.shape)} / {tuple(rec_scores.shape)} and targets {tuple(targets.shape)} do not pair")
    llm_scores, rec_scores = llm_scores.clone().float(), rec_scores.clone().float()  # out of inference mode: autograd reads them
    gate = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([gate], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(rec_scores.float() + gate * llm_scores.float(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(gate.detach())


@torch.inference_mode()
def scores_on(model: LLaRA, samples, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(llm next-item scores, recommender scores)``, each ``(n, N)``, of the full hybrid prompt of every sample."""
    llm, rec = [], []
    for start in tqdm(range(0, len(samples), batch_size), desc="scores", leave=False):
        chunk = samples[start: start + batch_size]
        prompts = [model.builder.build(s.history, (s.target, _other(s)), hybrid=True) for s in chunk]
        scores, _ = model.all_item_scores(prompts)
        llm.append(scores.float().cpu())
        rec.append(model.recommender_scores([s.history for s in chunk]).float().cpu())
    return torch.cat(llm), torch.cat(rec)


def _other(sample) -> int:
    """Any item outside the sample's history and target: the prompt is cut before its candidates anyway."""
    return next(i for i in range(len(sample.history) + 2) if i not in sample.history and i != sample.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a hybrid LLaRA checkpoint with a next-item head and no gate yet")
    parser.add_argument("--positions", type=int, default=10, help="validation positions per user (0 = every one; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per pass (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.positions < 0 or args.batch_size < 1 or args.threads < 0:
        parser.error("--positions and --threads must be >= 0, --batch-size >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..checkpoint import CheckpointError, load_trainer_state, save_llara
    from ..model.loader import load_llara
    from .parts import all_position_samples, user_sequences_of

    folder = Path(args.checkpoint)
    try:
        model, meta, ds = load_llara(str(folder), trainable=True)
        if model.next_head is None or model.recommender is None or meta["config"].get("mode") == "text":
            raise ValueError(f"{folder} is not a hybrid checkpoint with a next-item head: nothing to gate")
        if model.next_head.gate is not None:
            raise ValueError(f"{folder} already has a residual gate ({float(model.next_head.gate):.4f})")
        # every position of the validation users where the dataset keeps their sequences, else their last one
        samples = all_position_samples(user_sequences_of(ds, "val"), per_user=args.positions) if ds.sequences else list(ds.val)
        llm, rec = scores_on(model.eval(), samples, args.batch_size)
        gate = fit_gate(llm, rec, torch.tensor([s.target for s in samples]))
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.next_head.gate = torch.nn.Parameter(torch.tensor(gate))
    keep = {k: v for k, v in meta.items() if k not in ("format", "projector", "files")}
    keep["config"] = {**meta["config"], "residual": True}
    keep["residual_gate"] = {"value": gate, "fitted": "after training, LLM frozen", "samples": len(samples),
                             "users": "val", "positions_per_user": args.positions}
    save_llara(folder, model, keep, trainer_state=load_trainer_state(folder))
    print(f"{folder.name}: residual gate {gate:.4f}, fitted on {len(samples)} validation samples; saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
