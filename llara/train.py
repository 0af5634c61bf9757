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
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .batch import collate
from .build import LORA_TARGETS, build_llara, model_options
from .checkpoint import (
    CheckpointError,
    load_trainer_state,
    portable_path,
    read_json,
    resolve_path,
    restore_interrupted,
    save_llara,
)
from .config import add_dataclass_args, from_args, option
from .constants import RECOMMENDER_DIR
from .curriculum import CURRICULUM_MODES, hybrid_probability, use_hybrid
from .data import Sample, SequenceDataset, draw_candidates, load_dataset
from .data.args import add_dataset_args, dataset_from_args
from .device import accelerator_for, add_device_arg, compute_dtype, cpu_info
from .llm import unpack_4bit_for_training
from .loader import load_llara
from .model import LLaRA
from .recommenders import RECOMMENDERS
from .warm_start import inherit_architecture, warm_start

DEFAULT_REC_DIR = RECOMMENDER_DIR


@dataclass
class TrainConfig:
    """Everything that defines a LLaRA training run (saved in the checkpoint's meta.json)."""

    output: str = option("", "checkpoint folder to write (and to resume from with --resume)")
    base_model: str = option("smollm2-135m", "base LLM: smollm2-135m, gemma3-270m, a local folder or a Hugging Face id")
    precision: str = option("bf16", "weights of the base LLM", choices=["bf16", "fp32", "nf4"])
    recommender: str = option("sasrec", "recommender whose item embeddings are projected", choices=list(RECOMMENDERS))
    recommender_dir: str = option(str(DEFAULT_REC_DIR), "folder with <dataset>/<recommender>.safetensors")
    mode: str = option("curriculum", "prompt schedule", choices=list(CURRICULUM_MODES))
    switch_fraction: float = option(0.4, "two-stage: fraction of steps on text-only prompts before switching")
    projector: str = option("mlp2x_gelu", "projector architecture: linear, mlp2x_gelu, mlpNx_gelu")
    norm_to_tokens: bool = option(True, "scale projected vectors to the mean token-embedding norm")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    lora_targets: str = option(LORA_TARGETS, "comma-separated module names that get LoRA")
    head_weight: float = option(0.0, "weight of the candidate-head cross-entropy over the 20 candidates (0 = the paper's recipe: title loss only)")
    title_weight: float = option(1.0, "weight of the paper's loss on the answer's title tokens; 0 = no title loss, and "
                                 "with --head-weight 0 training prompts are cut after the query slot (about 3x shorter)")
    next_weight: float = option(0.0, "weight of the next-item head's cross-entropy over the whole catalog (0 = no "
                                "next-item head); see llara/next_item.py")
    dense: bool = option(True, "next-item loss at every history slot (each predicts the item after it), not only at "
                         "the query slot")
    user_token: bool = option(False, "add a user slot after the history carrying the recommender's projected sequence "
                              "state (hybrid prompts; a plain placeholder in text-only prompts)")
    distill_weight: float = option(0.0, "weight of the KL from the recommender's softmax over the candidates to the "
                                   "next-item head's (needs --next-weight > 0)")
    follow_weight: float = option(0.0, "weight of the KL from the next-item head's softmax over the candidates to the "
                                  "softmax of their answers' log-likelihoods, so the title the LLM writes is the head's "
                                  "pick (needs --next-weight > 0 and --title-weight > 0; llara/follow.py)")
    follow_top: int = option(8, "the follow loss scores the next-item head's this many best candidates per prompt "
                             "(0 = all; each scored answer costs about a dozen tokens of compute)")
    residual: bool = option(False, "also learn residual scoring: recommender score + gate * next-item score, gate from 0")
    text_items: bool = option(False, "next-item head over title features (mean title-token embedding) instead of the "
                              "recommender's item table: for text-only models, which then never use the recommender")
    item_features: str = option("auto", "fixed item vectors the next-item head scores against: recommender (its item "
                                "table), titles (mean title-token embedding), minilm (all-MiniLM-L6-v2 of title, year "
                                "and genres), recommender+minilm (both); auto = titles with --text-items, else recommender",
                                choices=["auto", "recommender", "titles", "minilm", "recommender+minilm"])
    modality_dropout: float = option(0.0, "hybrid training prompts: each part (titles, item slots, user token) is dropped "
                                     "with this probability, at least one kept, so no part can stand in for the rest")
    init_from: str = option("", "start from this trained checkpoint's weights (its architecture flags are inherited; "
                            "a new run: fresh optimizer and schedule; llara/warm_start.py)")
    lr: float = option(8e-4, "peak learning rate of the LoRA weights")
    projector_lr: float = option(0.0, "peak learning rate of the projector (0 = same as --lr)")
    warmup_ratio: float = option(0.05, "fraction of steps with linear warm-up")
    min_lr_ratio: float = option(0.01, "cosine decay ends at lr * this")
    batch_size: int = option(2, "prompts per forward pass and process")
    grad_accum: int = option(1, "forward passes per optimizer step")
    epochs: float = option(1.0, "passes over the (sub-sampled) training prompts")
    max_steps: int = option(0, "stop after this many optimizer steps (0 = from epochs)")
    max_train_samples: int = option(0, "use at most this many training prompts (0 = all); CPU budgets")
    sample_strategy: str = option("recent", "which prompts to keep: each user's most recent windows first, or random", choices=["recent", "random"])
    eval_every: int = option(0, "validate every N steps (0 = only at the end)")
    val_samples: int = option(32, "validation users for the periodic check (rank HR@1, candidate seed 0)")
    save_every: int = option(50, "write a checkpoint every N steps")
    seed: int = option(0, "seed of sub-sampling, order, candidates, phrasing and the curriculum draws")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    gradient_checkpointing: bool = option(False, "recompute each layer's activations during the backward pass: about "
                                          "a third more compute for a fraction of the activation memory (7B models)")
    resume: bool = option(False, "continue from the checkpoint in --output")


def config_problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with the numbers of ``cfg`` (each would otherwise crash mid-run or train nonsense)."""
    checks = [
        ("--batch-size", cfg.batch_size, cfg.batch_size >= 1, ">= 1"),
        ("--grad-accum", cfg.grad_accum, cfg.grad_accum >= 1, ">= 1"),
        ("--save-every", cfg.save_every, cfg.save_every >= 1, ">= 1"),
        ("--epochs", cfg.epochs, math.isfinite(cfg.epochs) and cfg.epochs > 0, "a finite number > 0"),
        ("--max-steps", cfg.max_steps, cfg.max_steps >= 0, ">= 0 (0 = from --epochs)"),
        ("--max-train-samples", cfg.max_train_samples, cfg.max_train_samples >= 0, ">= 0 (0 = all)"),
        ("--eval-every", cfg.eval_every, cfg.eval_every >= 0, ">= 0"),
        ("--val-samples", cfg.val_samples, cfg.val_samples >= 0, ">= 0"),
        ("--lr", cfg.lr, math.isfinite(cfg.lr) and cfg.lr > 0, "a finite number > 0"),
        ("--projector-lr", cfg.projector_lr, math.isfinite(cfg.projector_lr) and cfg.projector_lr >= 0, ">= 0 (0 = --lr)"),
        ("--head-weight", cfg.head_weight, math.isfinite(cfg.head_weight) and cfg.head_weight >= 0, ">= 0"),
        ("--title-weight", cfg.title_weight, math.isfinite(cfg.title_weight) and cfg.title_weight >= 0, ">= 0"),
        ("--next-weight", cfg.next_weight, math.isfinite(cfg.next_weight) and cfg.next_weight >= 0, ">= 0"),
        ("--distill-weight", cfg.distill_weight, math.isfinite(cfg.distill_weight) and cfg.distill_weight >= 0
         and (cfg.distill_weight == 0 or cfg.next_weight > 0), ">= 0, and > 0 only with --next-weight > 0"),
        ("--follow-weight", cfg.follow_weight, math.isfinite(cfg.follow_weight) and cfg.follow_weight >= 0
         and (cfg.follow_weight == 0 or (cfg.next_weight > 0 and cfg.title_weight > 0)),
         ">= 0, and > 0 only with --next-weight > 0 and --title-weight > 0"),
        ("--follow-top", cfg.follow_top, cfg.follow_top >= 0 and cfg.follow_top != 1, ">= 2, or 0 for all"),
        ("--init-from", cfg.init_from, not (cfg.init_from and cfg.resume), "not with --resume (a resumed run keeps its start)"),
        ("--residual", cfg.residual, not cfg.residual or cfg.next_weight > 0, "used with --next-weight > 0"),
        ("--text-items", cfg.text_items, not cfg.text_items or (cfg.next_weight > 0 and cfg.mode == "text" and not cfg.user_token
                                                                and not cfg.residual),
         "used with --next-weight > 0 and --mode text, without --user-token or --residual"),
        ("--item-features", cfg.item_features, cfg.item_features in ("auto", "recommender") or
         (cfg.next_weight > 0 and not (cfg.item_features in ("titles", "minilm") and (cfg.user_token or cfg.residual))),
         "used with --next-weight > 0; titles / minilm (no recommender) without --user-token or --residual"),
        ("--modality-dropout", cfg.modality_dropout, 0 <= cfg.modality_dropout < 1, "in [0, 1)"),
        ("the losses", "all 0", cfg.title_weight + cfg.head_weight + cfg.next_weight > 0,
         "not all 0 (--title-weight, --head-weight, --next-weight)"),
        ("--warmup-ratio", cfg.warmup_ratio, 0 <= cfg.warmup_ratio < 1, "in [0, 1)"),
        ("--min-lr-ratio", cfg.min_lr_ratio, 0 <= cfg.min_lr_ratio <= 1, "in [0, 1]"),
        ("--switch-fraction", cfg.switch_fraction, 0 <= cfg.switch_fraction <= 1, "in [0, 1]"),
        ("--lora-r", cfg.lora_r, cfg.lora_r >= 1, ">= 1"),
        ("--lora-dropout", cfg.lora_dropout, 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        ("--seed", cfg.seed, 0 <= cfg.seed < 2**32, "in 0..4294967295"),
        ("--threads", cfg.threads, cfg.threads >= 0, ">= 0 (0 = torch's default)"),
    ]
    return [f"{flag} must be {rule}, got {value}" for flag, value, ok, rule in checks if not ok]


def select_samples(train: list[Sample], limit: int, strategy: str, seed: int) -> list[Sample]:
    """Sub-sample training prompts. ``recent`` walks every user's windows from the newest, one per user per round,
    so a small budget still covers all users with the behaviour closest to what val/test users are asked about."""
    if limit <= 0 or limit >= len(train):
        return list(train)
    if strategy == "random" or all(s.user == -1 for s in train):
        keep = np.random.default_rng(seed).choice(len(train), size=limit, replace=False)
        return [train[i] for i in sorted(keep)]
    by_user: dict[int, list[int]] = {}
    for i, s in enumerate(train):
        by_user.setdefault(s.user, []).append(i)
    users = sorted(by_user)
    random.Random(seed).shuffle(users)
    chosen: list[int] = []
    depth = 1
    while len(chosen) < limit:
        for u in users:
            if len(by_user[u]) >= depth:
                chosen.append(by_user[u][-depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return [train[i] for i in sorted(chosen)]


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio``: a pure function of the step."""
    warmup = max(1, int(round(warmup_ratio * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PromptStream:
    """Training prompt number ``g`` (global position in the stream) as a pure function of ``(seed, g)``."""

    def __init__(self, model: LLaRA, samples: list[Sample], cfg: TrainConfig, total_steps: int) -> None:
        self.model, self.samples, self.cfg, self.total = model, samples, cfg, total_steps
        self._orders: dict[int, np.ndarray] = {}

    def sample(self, g: int) -> Sample:
        epoch, offset = divmod(g, len(self.samples))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))}
        return self.samples[int(self._orders[epoch][offset])]

    def prompt(self, g: int, step: int):
        s = self.sample(g)
        rng = np.random.default_rng([self.cfg.seed, 1, g])
        candidates = draw_candidates(s.history, s.target, self.model.builder.catalog, rng)
        hybrid = use_hybrid(self.cfg.mode, step, self.total, sample_key=g, seed=self.cfg.seed, switch_fraction=self.cfg.switch_fraction)
        dropped = dropped_parts(self.cfg.modality_dropout, hybrid, self.model.builder.user_token,
                                np.random.default_rng([self.cfg.seed, 3, g])) if self.cfg.modality_dropout else set()
        prompt = self.model.builder.build(s.history, candidates, hybrid=hybrid, target=s.target,
                                          rng=random.Random(int(rng.integers(2**31))), titles="titles" not in dropped)
        prompt = prompt.without(dropped - {"titles"})
        return prompt.truncated() if short_prompts(self.cfg) else prompt


def dropped_parts(p: float, hybrid: bool, user_token: bool, rng: np.random.Generator) -> set[str]:
    """Modality dropout: the parts of one hybrid training prompt to remove, each with probability ``p``, never all
    of them (one part, drawn at random, is kept), so every part has to carry the answer on its own some of the time.
    Text-only prompts have one part (the titles) and keep it."""
    parts = ["titles", "items"] + (["user"] if user_token else [])
    if not hybrid or p <= 0:
        return set()
    drop = [part for part, u in zip(parts, rng.random(len(parts))) if u < p]
    if len(drop) == len(parts):
        drop.remove(parts[int(rng.integers(len(parts)))])
    return set(drop)


def short_prompts(cfg: TrainConfig) -> bool:
    """No loss reads past the query slot: train on prompts cut there (same hidden states, a third of the tokens)."""
    return cfg.title_weight == 0 and cfg.head_weight == 0 and cfg.next_weight > 0


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
    parser = argparse.ArgumentParser(prog="python -m llara.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def train(cfg: TrainConfig, args: argparse.Namespace) -> int:
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
    # FSDP: every process holds a shard; the full weights exist only when gathered (see ``checkpoint``)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    out = Path(cfg.output)
    start_step, state, started_from = 0, None, None
    if cfg.resume:
        restore_interrupted(out)  # killed mid-save: the previous checkpoint is put back
    resuming = cfg.resume and (out / "meta.json").is_file()
    if resuming:
        # The saved config defines the run; flags given now may only repeat it. output/threads may change (a moved
        # folder, another machine).
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
        model, meta, _ = load_llara(str(out), dataset=ds, trainable=True, device=accelerator.device)
        start_step, state = meta["step"], load_trainer_state(out)
        if state is not None and state.get("optimizer") is None:
            raise ValueError(f"{out} was written by a sharded (FSDP) run, which keeps no optimizer state: it cannot be "
                             "resumed; start a new run from it or train without sharding")
        accelerator.print(f"resuming {out} at step {start_step}/{meta['total_steps']}")
    elif cfg.init_from:
        cfg = inherit_architecture(cfg, getattr(args, "explicit", set()))
        ds = dataset_from_args(args)
        model, started_from = warm_start(cfg, ds, device=accelerator.device)
    else:
        ds = dataset_from_args(args)
        rec_stem = Path(cfg.recommender_dir) / ds.name / cfg.recommender
        lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": cfg.lora_targets}
        model = build_llara(ds, str(rec_stem), cfg.base_model, cfg.precision, cfg.projector, cfg.norm_to_tokens, lora, cfg.seed,
                            device=accelerator.device, **model_options(asdict(cfg)))
    if cfg.gradient_checkpointing:
        # non-reentrant: works with inputs_embeds that need no grad and restores the dropout RNG on recompute
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    samples = select_samples(ds.train, cfg.max_train_samples, cfg.sample_strategy, cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    total = cfg.max_steps or max(1, math.ceil(len(samples) * cfg.epochs / per_step))
    lora_params = [p for n, p in model.llm.named_parameters() if p.requires_grad]
    extra = [m for m in (model.head, model.user_projector, model.next_head) if m is not None]
    groups = [{"params": lora_params, "lr": cfg.lr, "base_lr": cfg.lr},
              {"params": list(model.projector.parameters()) + [p for m in extra for p in m.parameters()],
               "lr": cfg.projector_lr or cfg.lr, "base_lr": cfg.projector_lr or cfg.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    stream = PromptStream(model, samples, cfg, total)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(f"{len(samples)} training prompts, {total} steps of {per_step}, {trainable:,} trainable parameters, mode {cfg.mode}")
    log: list[dict] = list(state["log"]) if state else []
    meta_base = {
        "config": asdict(cfg), "base_model": cfg.base_model, "precision": cfg.precision, "total_steps": total,
        "recommender": {"path": portable_path(Path(cfg.recommender_dir) / ds.name / cfg.recommender), "model": cfg.recommender,
                        "weights_sha256": read_json(Path(cfg.recommender_dir) / ds.name / f"{cfg.recommender}.json")["weights_sha256"]},
        "dataset": {"name": ds.name, "data_dir": portable_path(args.data_dir) if args.data_dir else None, "split": args.split, "split_seed": args.split_seed,
                    "n_items": ds.n_items, "fingerprint": ds.fingerprint()},
    }
    # which CPU and compute dtype trained which steps (a resumed run may continue on another machine)
    cpu = cpu_info()
    runs = [*(read_json(out / "meta.json").get("runs", []) if resuming else []),
            {"from_step": start_step, "compute_dtype": str(compute_dtype(cfg.precision, accelerator.device)).removeprefix("torch."),
             "device": str(accelerator.device), "cpu": cpu["cpu"], "native_bf16": cpu["native_bf16"]}]
    meta_base["runs"] = runs
    started_from = started_from or (read_json(out / "meta.json").get("init_from") if resuming else None)
    if started_from:
        meta_base["init_from"] = started_from
    started, seen = time.perf_counter(), 0

    def checkpoint(step: int, extra: dict | None = None) -> None:
        # sharded: every process takes part in gathering the full weights; the optimizer state stays split (not saved)
        full = accelerator.get_state_dict(wrapped) if sharded else None
        if accelerator.is_main_process:
            elapsed = time.perf_counter() - started
            stats = {"step": step, "train_seconds": round(elapsed + (state or {}).get("train_seconds", 0.0), 1),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "log": log,
                     "device": f"{accelerator.device} x {accelerator.num_processes}"}
            save_llara(out, accelerator.unwrap_model(wrapped), {**meta_base, **stats, **(extra or {})},
                       trainer_state={"optimizer": None if sharded else optimizer.state_dict(), "log": log,
                                      "train_seconds": stats["train_seconds"]}, **({"state_dict": full} if sharded else {}))
        accelerator.wait_for_everyone()

    wrapped.train()
    bar = tqdm(range(start_step, total), initial=start_step, total=total, desc=f"train {cfg.mode}", disable=not accelerator.is_main_process)
    for step in bar:
        # dropout masks as a pure function of (seed, step, process): a resumed run draws what the uninterrupted one did
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, 2, step, accelerator.process_index]).generate_state(1)[0]))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, total, cfg.warmup_ratio, cfg.min_lr_ratio)
        step_loss = 0.0
        parts: dict[str, float] = {}  # loss name -> its share of this step
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size * accelerator.num_processes
            first += accelerator.process_index * cfg.batch_size
            prompts = [stream.prompt(g, step) for g in range(first, first + cfg.batch_size)]
            batch = collate(prompts, model.pad_id, with_targets=True, padding_side="right", device=accelerator.device)
            sync = micro == cfg.grad_accum - 1
            with accelerator.no_sync(wrapped) if not sync else contextlib.nullcontext():
                result = wrapped(batch)
                loss = result.loss / cfg.grad_accum
                accelerator.backward(loss)
            for k, v in getattr(result, "losses", {}).items():
                parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
            step_loss += accelerator.reduce(loss.detach(), reduction="mean").item()  # averaged over processes
        accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += per_step
        p_hybrid = hybrid_probability(cfg.mode, step, total, cfg.switch_fraction)
        rate = seen / (time.perf_counter() - started)
        log.append({"step": step + 1, "loss": round(step_loss, 5), "p_hybrid": round(p_hybrid, 4), "lr": optimizer.param_groups[0]["lr"],
                    **({f"loss_{k}": round(v, 5) for k, v in parts.items()} if len(parts) > 1 else {})})
        bar.set_postfix(loss=f"{step_loss:.3f}", p_hybrid=f"{p_hybrid:.2f}", samples_s=f"{rate:.2f}")
        done = step + 1
        # validation reads the whole model in one process: not while it is sharded (evaluate the checkpoint instead)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total and accelerator.is_main_process and not sharded:
            wrapped.eval()
            log[-1]["val_hr@1"] = quick_validation(accelerator.unwrap_model(wrapped), ds, cfg.val_samples, hybrid=cfg.mode != "text")
            accelerator.print(f"step {done}: val rank HR@1 {log[-1]['val_hr@1']:.3f} on {cfg.val_samples} users")
            wrapped.train()
            unpack_4bit_for_training(model.llm)  # the no-grad validation repacked 4-bit weights into a no-autograd form
        if done % cfg.save_every == 0 and done < total:
            checkpoint(done)
    wrapped.eval()
    final = {}
    if accelerator.is_main_process and cfg.val_samples > 0 and not sharded:
        final["val_hr@1"] = quick_validation(accelerator.unwrap_model(wrapped), ds, cfg.val_samples, hybrid=cfg.mode != "text")
        accelerator.print(f"final val rank HR@1 {final['val_hr@1']:.3f} on {cfg.val_samples} users")
    final["samples_per_second"] = round(seen / max(1e-9, time.perf_counter() - started), 3)
    checkpoint(total, final)
    accelerator.print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
