"""Train LLaRA: LoRA on the LLM plus the projector, moving from text-only to hybrid prompts by a curriculum.

    python -m llara.train --output checkpoints/llara/movielens-sasrec-curriculum --mode curriculum \\
        --recommender sasrec --max-train-samples 1000
    python -m llara.train --output runs/text --mode text --max-train-samples 64 --batch-size 2 --precision nf4
    python -m llara.train --output checkpoints/llara/movielens-sasrec-curriculum --resume      # continue a run
    python -m llara.train --output runs/follow --init-from checkpoints/llara/movielens-gru4rec-lang-5k --mode hybrid \
        --next-weight 1 --title-weight 1 --follow-weight 1 --max-train-samples 800   # teach it to write its pick
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m llara.train --output runs/ddp --max-steps 2

On GPUs: ``--device cuda`` (``auto`` picks it when present); several GPUs with the accelerate configs in
configs/accelerate/ (DDP, and FSDP for a 7B base); the commands and the 7B recipe are in docs/gpu.md.

Every choice that varies per sample (order, candidates, phrasing, text or hybrid prompt) is a pure function of
the seed and the sample's position in the training stream, so a resumed run makes exactly the choices the
uninterrupted run would have made. Checkpoints (LoRA adapter + projector + meta.json + optimizer state) are
written atomically every ``--save-every`` steps and at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import (
    CheckpointError,
    load_trainer_state,
    portable_path,
    read_json,
    resolve_path,
    restore_interrupted,
    save_llara,
)
from ..config import add_dataclass_args, from_args
from ..data import SequenceDataset, load_dataset
from ..data.args import add_dataset_args, dataset_from_args
from ..device import accelerator_for, add_device_arg, compute_dtype, cpu_info
from ..model.build import build_llara, model_options
from ..model.follow import answer_on_head
from ..model.llara_model import LLaRA
from ..model.llm import unpack_4bit_for_training
from ..model.loader import load_llara
from ..prompt.batch import collate
from .curriculum import hybrid_probability
from .train_config import TrainConfig, config_problems
from .train_stream import PromptStream, select_samples
from .warm_start import inherit_architecture, warm_start


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio``: a pure function of the step."""
    warmup = max(1, int(round(warmup_ratio * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))






@torch.inference_mode()
def quick_validation(model: LLaRA, ds: SequenceDataset, n: int, hybrid: bool) -> float:
    """HR@1 on the first ``n`` validation samples (candidate seed 0), by the head if there is one, else by title
    likelihood: a cheap learning signal."""
    samples = ds.val[:n]
    cands = ds.candidates("val", seed=0)[: len(samples)]
    hits = 0
    for s, c in zip(samples, cands):
        prompt = model.builder.build(s.history, c, hybrid=hybrid)
        if model.next_head is not None:
            ranked = model.rank_items(prompt, residual=False)
        else:
            ranked = model.rank_head(prompt) if model.head is not None else model.rank(prompt)
        hits += ranked[0][0] == s.target
    return hits / max(1, len(samples))


def main(argv: list[str] | None = None) -> int:
    # A short usage line: the full one lists ~60 flags and buries the one-line error under it; --help has them all.
    parser = argparse.ArgumentParser(prog="python -m llara.train", description=__doc__,
                                     usage="%(prog)s --output DIR [--mode MODE] [options]  (--help lists every flag)",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, TrainConfig)
    add_dataset_args(parser)
    add_device_arg(parser)
    args = parser.parse_args(argv)
    args.explicit = {k for k, v in vars(args).items() if v != parser.get_default(k)}  # flags the user actually set
    cfg = from_args(TrainConfig, args)
    if not cfg.output:
        parser.error("--output is required")
    problems = config_problems(cfg)
    if problems:
        parser.error("; ".join(problems))
    try:
        return train(cfg, args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def open_run(cfg: TrainConfig, args: argparse.Namespace, device, say=print) -> tuple[TrainConfig, SequenceDataset, LLaRA, int, dict | None, dict | None]:
    """Where a run starts: ``(cfg, dataset, model, start step, trainer state, warm-start record)``. ``--resume``
    continues the checkpoint in ``--output`` (its saved config defines the run; flags given now may only repeat it),
    ``--init-from`` starts a new run from another checkpoint's weights, else a fresh model is built."""
    out = Path(cfg.output)
    if cfg.resume:
        restore_interrupted(out)  # killed mid-save: the previous checkpoint is put back
    if cfg.resume and (out / "meta.json").is_file():
        saved = read_json(out / "meta.json")
        explicit = getattr(args, "explicit", set(asdict(cfg)))
        volatile = {"resume", "output", "threads", "gradient_checkpointing"}  # how, not what, is computed
        differs = {k: (v, saved["config"].get(k)) for k, v in asdict(cfg).items()
                   if k in explicit and k not in volatile and saved["config"].get(k) != v}
        cfg = TrainConfig(**{**saved["config"], "output": cfg.output, "threads": cfg.threads, "resume": True,
                             "gradient_checkpointing": cfg.gradient_checkpointing})
        data = saved.get("dataset", {})
        dataset_flags = {"dataset", "data_dir", "split", "split_seed"} & explicit
        ds = dataset_from_args(args) if dataset_flags else load_dataset(
            data.get("name", "movielens"), data_dir=resolve_path(data["data_dir"], out) if data.get("data_dir") else None,
            split=data.get("split", "paper"), seed=data.get("split_seed", 0), allow_pickle=args.allow_pickle)
        if not dataset_flags:
            args.data_dir = str(resolve_path(data["data_dir"], out)) if data.get("data_dir") else None
            args.split, args.split_seed = data.get("split", "paper"), data.get("split_seed", 0)
        if data.get("fingerprint") != ds.fingerprint():
            differs["dataset"] = (f"{ds.name} {ds.fingerprint()[:12]}", f"{saved.get('dataset', {}).get('name')} {saved.get('dataset', {}).get('fingerprint', '')[:12]}")
        if differs:
            raise ValueError(f"--resume with a different config than {out} was trained with: {differs}")
        model, meta, _ = load_llara(str(out), dataset=ds, trainable=True, device=device)
        state = load_trainer_state(out)
        if state is not None and state.get("optimizer") is None:
            raise ValueError(f"{out} was written by a sharded (FSDP) run, which keeps no optimizer state: it cannot be "
                             "resumed; start a new run from it or train without sharding")
        say(f"resuming {out} at step {meta['step']}/{meta['total_steps']}")
        return cfg, ds, model, meta["step"], state, saved.get("init_from")
    ds = dataset_from_args(args)
    if cfg.init_from:
        cfg = inherit_architecture(cfg, getattr(args, "explicit", set()))
        model, started_from = warm_start(cfg, ds, device=device)
        return cfg, ds, model, 0, None, started_from
    rec_stem = Path(cfg.recommender_dir) / ds.name / cfg.recommender
    lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": cfg.lora_targets}
    model = build_llara(ds, str(rec_stem), cfg.base_model, cfg.precision, cfg.projector, cfg.norm_to_tokens, lora, cfg.seed,
                        device=device, **model_options(asdict(cfg)))
    return cfg, ds, model, 0, None, None


def make_optimizer(model: LLaRA, cfg: TrainConfig, state: dict | None) -> torch.optim.Optimizer:
    """AdamW over two groups: the LoRA weights (``--lr``) and the projector with the heads (``--projector-lr``)."""
    lora_params = [p for n, p in model.llm.named_parameters() if p.requires_grad]
    extra = [m for m in (model.head, model.user_projector, model.next_head) if m is not None]
    groups = [{"params": lora_params, "lr": cfg.lr, "base_lr": cfg.lr},
              {"params": list(model.projector.parameters()) + [p for m in extra for p in m.parameters()],
               "lr": cfg.projector_lr or cfg.lr, "base_lr": cfg.projector_lr or cfg.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return optimizer


def run_meta(cfg: TrainConfig, ds: SequenceDataset, args: argparse.Namespace, total: int, start_step: int, device,
             started_from: dict | None) -> dict:
    """What every checkpoint of the run records besides its step: config, recommender, dataset, which CPU and compute
    dtype trained which steps (a resumed run may continue on another machine) and the warm start."""
    out = Path(cfg.output)
    resuming = start_step > 0 and (out / "meta.json").is_file()
    cpu = cpu_info()
    meta = {
        "config": asdict(cfg), "base_model": cfg.base_model, "precision": cfg.precision, "total_steps": total,
        "recommender": {"path": portable_path(Path(cfg.recommender_dir) / ds.name / cfg.recommender), "model": cfg.recommender,
                        "weights_sha256": read_json(Path(cfg.recommender_dir) / ds.name / f"{cfg.recommender}.json")["weights_sha256"]},
        "dataset": {"name": ds.name, "data_dir": portable_path(args.data_dir) if args.data_dir else None, "split": args.split, "split_seed": args.split_seed,
                    "n_items": ds.n_items, "fingerprint": ds.fingerprint()},
        "runs": [*(read_json(out / "meta.json").get("runs", []) if resuming else []),
                 {"from_step": start_step, "compute_dtype": str(compute_dtype(cfg.precision, device)).removeprefix("torch."),
                  "device": str(device), "cpu": cpu["cpu"], "native_bf16": cpu["native_bf16"]}],
    }
    if started_from:
        meta["init_from"] = started_from
    return meta


class Trainer:
    """One run's loop state, in named steps: ``step`` (one optimizer step), ``validate``, ``save``."""

    def __init__(self, accelerator, model: LLaRA, optimizer, stream: PromptStream, cfg: TrainConfig, ds: SequenceDataset,
                 total: int, per_step: int, meta: dict, state: dict | None, sharded: bool) -> None:
        self.accelerator, self.model, self.cfg, self.ds, self.total = accelerator, model, cfg, ds, total
        self.stream, self.meta, self.state, self.sharded = stream, meta, state, sharded
        self.wrapped, self.optimizer = accelerator.prepare(model, optimizer)
        self.log: list[dict] = list(state["log"]) if state else []
        self.per_step = per_step  # prompts per optimizer step, over all processes
        self.started, self.seen = time.perf_counter(), 0

    def step(self, step: int) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns (and logs) its losses."""
        cfg, acc, wrapped = self.cfg, self.accelerator, self.wrapped
        # dropout masks as a pure function of (seed, step, process): a resumed run draws what the uninterrupted one did
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, 2, step, acc.process_index]).generate_state(1)[0]))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, self.total, cfg.warmup_ratio, cfg.min_lr_ratio)
        step_loss = 0.0
        parts: dict[str, float] = {}  # loss name -> its share of this step
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size * acc.num_processes + acc.process_index * cfg.batch_size
            prompts = [self.stream.prompt(g, step) for g in range(first, first + cfg.batch_size)]
            if cfg.answer_target == "head":  # the LM learns to write the head's pick (llara/model/follow.py)
                prompts = answer_on_head(acc.unwrap_model(wrapped), prompts)
            batch = collate(prompts, self.model.pad_id, with_targets=True, padding_side="right", device=acc.device)
            with acc.no_sync(wrapped) if micro < cfg.grad_accum - 1 else contextlib.nullcontext():
                result = wrapped(batch)
                loss = result.loss / cfg.grad_accum
                acc.backward(loss)
            for k, v in getattr(result, "losses", {}).items():
                parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
            step_loss += acc.reduce(loss.detach(), reduction="mean").item()  # averaged over processes
        acc.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.seen += self.per_step
        p_hybrid = hybrid_probability(cfg.mode, step, self.total, cfg.switch_fraction)
        self.log.append({"step": step + 1, "loss": round(step_loss, 5), "p_hybrid": round(p_hybrid, 4),
                         "lr": self.optimizer.param_groups[0]["lr"],
                         **({f"loss_{k}": round(v, 5) for k, v in parts.items()} if len(parts) > 1 else {})})
        return self.log[-1]

    def rate(self) -> float:
        return self.seen / max(1e-9, time.perf_counter() - self.started)

    def validate(self) -> float | None:
        """Rank HR@1 on ``--val-samples`` validation users; None where it cannot run here (validation reads the whole
        model in one process: not while it is sharded; evaluate the checkpoint instead)."""
        if not (self.accelerator.is_main_process and self.cfg.val_samples > 0 and not self.sharded):
            return None
        self.wrapped.eval()
        hr = quick_validation(self.accelerator.unwrap_model(self.wrapped), self.ds, self.cfg.val_samples,
                              hybrid=self.cfg.mode != "text")
        self.wrapped.train()
        unpack_4bit_for_training(self.model.llm)  # the no-grad validation repacked 4-bit weights into a no-autograd form
        return hr

    def save(self, step: int, extra: dict | None = None) -> None:
        """Write the checkpoint (atomically; with the optimizer state, so ``--resume`` continues exactly)."""
        acc = self.accelerator
        # sharded: every process takes part in gathering the full weights; the optimizer state stays split (not saved)
        full = acc.get_state_dict(self.wrapped) if self.sharded else None
        if acc.is_main_process:
            elapsed = time.perf_counter() - self.started
            stats = {"step": step, "train_seconds": round(elapsed + (self.state or {}).get("train_seconds", 0.0), 1),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "log": self.log,
                     "device": f"{acc.device} x {acc.num_processes}"}
            save_llara(Path(self.cfg.output), acc.unwrap_model(self.wrapped), {**self.meta, **stats, **(extra or {})},
                       trainer_state={"optimizer": None if self.sharded else self.optimizer.state_dict(), "log": self.log,
                                      "train_seconds": stats["train_seconds"]}, **({"state_dict": full} if self.sharded else {}))
        acc.wait_for_everyone()


def train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """Set up (resume, warm start or a fresh model), then step, validate every ``--eval-every`` steps and save every
    ``--save-every`` steps and at the end."""
    from accelerate import DistributedDataParallelKwargs
    from accelerate.utils import DistributedType

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Text-only steps leave the projector without gradients; DDP must be told that is expected.
    accelerator = accelerator_for(getattr(args, "device", "auto"),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed is not supported by this training loop (its engine owns the optimizer step and "
                         "gradient accumulation): use configs/accelerate/fsdp.yaml to shard a large base model")
    # FSDP: every process holds a shard; the full weights exist only when gathered (see ``Trainer.save``)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    cfg, ds, model, start_step, state, started_from = open_run(cfg, args, accelerator.device, accelerator.print)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with inputs_embeds that need no grad and restores the dropout RNG on recompute
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    samples = select_samples(ds.train, cfg.max_train_samples, cfg.sample_strategy, cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    total = cfg.max_steps or max(1, math.ceil(len(samples) * cfg.epochs / per_step))
    trainer = Trainer(accelerator, model, make_optimizer(model, cfg, state), PromptStream(model, samples, cfg, total),
                      cfg, ds, total, per_step, run_meta(cfg, ds, args, total, start_step, accelerator.device, started_from),
                      state, sharded)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(f"{len(samples)} training prompts, {total} steps of {per_step}, {trainable:,} trainable parameters, mode {cfg.mode}")
    trainer.wrapped.train()
    bar = tqdm(range(start_step, total), initial=start_step, total=total, desc=f"train {cfg.mode}", disable=not accelerator.is_main_process)
    for step in bar:
        logged = trainer.step(step)
        bar.set_postfix(loss=f"{logged['loss']:.3f}", p_hybrid=f"{logged['p_hybrid']:.2f}", samples_s=f"{trainer.rate():.2f}")
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
            hr = trainer.validate()
            if hr is not None:
                logged["val_hr@1"] = hr
                accelerator.print(f"step {done}: val rank HR@1 {hr:.3f} on {cfg.val_samples} users")
        if done % cfg.save_every == 0 and done < total:
            trainer.save(done)
    final: dict = {}
    hr = trainer.validate()
    trainer.wrapped.eval()
    if hr is not None:
        final["val_hr@1"] = hr
        accelerator.print(f"final val rank HR@1 {hr:.3f} on {cfg.val_samples} users")
    final["samples_per_second"] = round(trainer.rate(), 3)
    trainer.save(total, final)
    accelerator.print(f"saved {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
