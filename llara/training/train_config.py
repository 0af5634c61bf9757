"""The configuration of a LLaRA training run: every flag of ``python -m llara.train``, with its help text, and the
checks that refuse a nonsensical combination before any weight is loaded. Saved as JSON in every checkpoint's
meta.json (``config``), which is how ``--resume`` and ``--init-from`` know what a run was.

    python -m llara.train --help      # every field below, as a flag
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import option
from ..constants import RECOMMENDER_DIR
from ..model.build import LORA_TARGETS
from ..prompt.prompts import ANSWERS
from ..recommenders import RECOMMENDERS
from .curriculum import CURRICULUM_MODES

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
                                "next-item head); see llara/model/next_item.py")
    dense: bool = option(True, "next-item loss at every history slot (each predicts the item after it), not only at "
                         "the query slot")
    user_token: bool = option(False, "add a user slot after the history carrying the recommender's projected sequence "
                              "state (hybrid prompts; a plain placeholder in text-only prompts)")
    distill_weight: float = option(0.0, "weight of the KL from the recommender's softmax over the candidates to the "
                                   "next-item head's (needs --next-weight > 0)")
    follow_weight: float = option(0.0, "weight of the KL from the next-item head's softmax over the candidates to the "
                                  "softmax of their answers' log-likelihoods, so the title the LLM writes is the head's "
                                  "pick (needs --next-weight > 0 and --title-weight > 0; llara/model/follow.py)")
    follow_temperature: float = option(1.0, "the follow loss's teacher is softmax(head scores / this): below 1 "
                                       "sharpens it towards the head's top-1, the pick greedy decoding should write")
    mutual_weight: float = option(0.0, "weight of the follow loss's reverse: KL from the answers' softmax over the "
                                  "candidates (detached) to the next-item head's, so the head also moves towards what "
                                  "the words pick and the two rankers meet from both sides (mutual learning; needs "
                                  "--follow-weight > 0)")
    follow_top: int = option(8, "the follow loss scores the next-item head's this many best candidates per prompt "
                             "(0 = all; each scored answer costs about a dozen tokens of compute; with an indexed "
                             "--answer every candidate's letter is scored from the training pass itself, at no extra cost)")
    answer_target: str = option("target", "what the answer tokens of a training prompt name: target (the paper's: the "
                                "sample's next item) or head (the next-item head's own top-1 among the candidates, from "
                                "a no-grad pass before each step, so the written answer learns to say the head's pick "
                                "while the next-item losses keep learning the true next item; needs --next-weight > 0 "
                                "and --title-weight > 0)", choices=["target", "head"])
    answer: str = option("title", "how the answer names the pick: title (the paper's: the candidate's title), index "
                         "(candidates listed behind letters A, B, ...; the answer is the letter, then the title; the "
                         "follow loss then reads the letters' logits at the answer position) or index-after (the same "
                         "with each letter right after its candidate's slot) or index-both (the letter in front of the "
                         "title and after the slot) or slot-first (each candidate as '<slot> C: title': the letter after "
                         "the slot and before the title); llara/prompt/prompts.py",
                         choices=list(ANSWERS))
    residual: bool = option(False, "also learn residual scoring: recommender score + gate * next-item score, gate from 0")
    text_items: bool = option(False, "next-item head over title features (mean title-token embedding) instead of the "
                              "recommender's item table: for text-only models, which then never use the recommender")
    item_features: str = option("auto", "fixed item vectors the next-item head scores against: recommender (its item "
                                "table), titles (mean title-token embedding), minilm (all-MiniLM-L6-v2 of title, year "
                                "and genres), recommender+minilm (both); auto = titles with --text-items, else recommender",
                                choices=["auto", "recommender", "titles", "minilm", "recommender+minilm"])
    modality_dropout: float = option(0.0, "hybrid training prompts: each part (titles, item slots, user token) is dropped "
                                     "with this probability, at least one kept, so no part can stand in for the rest")
    item_dropout: float = option(-1.0, "the item slots' own drop probability under --modality-dropout (-1 = the same "
                                 "as --modality-dropout): higher makes the titles carry the prompt more often")
    slot_dropout: float = option(0.0, "hybrid training prompts that keep their item slots: each history item's slot is "
                                 "blanked with this probability (its title stays), so the prompt must be read item by "
                                 "item from whichever of slot and title it has")
    init_from: str = option("", "start from this trained checkpoint's weights (its architecture flags are inherited; "
                            "a new run: fresh optimizer and schedule; llara/training/warm_start.py)")
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
        ("--follow-temperature", cfg.follow_temperature, math.isfinite(cfg.follow_temperature) and cfg.follow_temperature > 0,
         "a finite number > 0"),
        ("--answer-target", cfg.answer_target, cfg.answer_target == "target" or (cfg.next_weight > 0 and cfg.title_weight > 0),
         "target, or head only with --next-weight > 0 and --title-weight > 0"),
        ("--mutual-weight", cfg.mutual_weight, math.isfinite(cfg.mutual_weight) and cfg.mutual_weight >= 0
         and (cfg.mutual_weight == 0 or cfg.follow_weight > 0), ">= 0, and > 0 only with --follow-weight > 0"),
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
        ("--item-dropout", cfg.item_dropout, cfg.item_dropout == -1 or (0 <= cfg.item_dropout < 1 and cfg.modality_dropout > 0),
         "-1, or in [0, 1) with --modality-dropout > 0"),
        ("the losses", "all 0", cfg.title_weight + cfg.head_weight + cfg.next_weight > 0,
         "not all 0 (--title-weight, --head-weight, --next-weight)"),
        ("--warmup-ratio", cfg.warmup_ratio, 0 <= cfg.warmup_ratio < 1, "in [0, 1)"),
        ("--min-lr-ratio", cfg.min_lr_ratio, 0 <= cfg.min_lr_ratio <= 1, "in [0, 1]"),
        ("--switch-fraction", cfg.switch_fraction, 0 <= cfg.switch_fraction <= 1, "in [0, 1]"),
        ("--lora-r", cfg.lora_r, cfg.lora_r >= 1, ">= 1"),
        ("--slot-dropout", cfg.slot_dropout, 0 <= cfg.slot_dropout < 1, "in [0, 1)"),
        ("--lora-dropout", cfg.lora_dropout, 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        ("--seed", cfg.seed, 0 <= cfg.seed < 2**32, "in 0..4294967295"),
        ("--threads", cfg.threads, cfg.threads >= 0, ">= 0 (0 = torch's default)"),
    ]
    return [f"{flag} must be {rule}, got {value}" for flag, value, ok, rule in checks if not ok]


def short_prompts(cfg: TrainConfig) -> bool:
    """No loss reads past the query slot: train on prompts cut there (same hidden states, a third of the tokens)."""
    return cfg.title_weight == 0 and cfg.head_weight == 0 and cfg.next_weight > 0
