"""The LLaRA paper's published figures (Liao et al., SIGIR 2024), in one place: every table and command that prints
them beside ours reads them from here. These are the paper's numbers (Llama2-7B, ~300,000 training prompts, greedy
generation), never ours.
"""
from __future__ import annotations

# Table 1: dataset statistics and the filtered test sizes.
DATASET_FIGURES: dict[str, dict[str, int]] = {
    "movielens": {"users": 943, "items": 1682, "interactions": 100000, "test samples": 95},
    "steam": {"users": 11938, "items": 3581, "test samples": 1186},
    "lastfm": {"users": 1220, "items": 4606, "test samples": 122},
}

# Table 2: HitRatio@1 of the traditional sequential recommenders.
RECOMMENDER_HR1: dict[str, dict[str, float]] = {
    "movielens": {"gru4rec": 0.3750, "caser": 0.3861, "sasrec": 0.3444},
    "steam": {"gru4rec": 0.4168, "caser": 0.4368, "sasrec": 0.4010},
    "lastfm": {"gru4rec": 0.2616, "caser": 0.2233, "sasrec": 0.2233},
}

# Table 2, MovieLens: ValidRatio / HitRatio@1 of greedy generation.
MOVIELENS_TABLE2: dict[str, tuple[float, float]] = {
    "GRU4Rec": (1.0, 0.3750), "Caser": (1.0, 0.3861), "SASRec": (1.0, 0.3444), "Llama2-7B zero-shot": (0.4421, 0.0421),
    "TALLRec (text-only LoRA)": (0.9263, 0.3895), "LLaRA (SASRec), curriculum": (0.9684, 0.4421),
}

# Table 3, MovieLens HR@1: how hybrid prompts are introduced during training.
PROMPT_ABLATION_HR1: dict[str, float] = {"always hybrid": 0.4211, "two-stage": 0.4316, "curriculum": 0.4421}
