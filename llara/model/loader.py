"""Rebuilding a trained LLaRA from a checkpoint folder (``load_llara``), and the cached merged-LoRA base model.

Kept apart from ``llara.checkpoint`` (file I/O only), so that file-level module stays a leaf every package may
import, and the recommenders, the LLM loader and the model never import each other through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..checkpoint import (
    OPTIONAL_PARTS,
    CheckpointError,
    load_tensors,
    read_json,
    read_llara_meta,
    resolve_path,
    sha256_file,
    write_json,
)
from ..data import load_dataset
from ..sources import cache_root, say
from .base_models import base_model_origin
from .build import build_llara, model_options
from .cpu4bit import detach_from_file, import_bitsandbytes
from .lora_side import attach_side_lora


def load_llara(folder: str | Path, dataset=None, precision: str | None = None, trainable: bool = False, merge: bool = False,
               device: str | torch.device | None = None):
    """Rebuild a trained LLaRA from a checkpoint folder; returns ``(model, meta, dataset)``.

    Checks every file against ``meta.json`` and the recommender and dataset against what the checkpoint was
    trained with, so a mismatch fails here with a clear message rather than as garbage predictions.
    ``merge`` (inference only): run on the base model with the LoRA update folded into its weights (see
    ``merged_base``): no adapter overhead per layer, and for nf4 and int8 the merged weights are what gets quantized.
    Unmerged int8 keeps the update as a side pass beside the int8 base layers (``lora_side``), which models over
    the same base then share.
    ``device``: where the model is loaded (default CPU; the merge itself is built on the CPU once).
    """
    import_bitsandbytes()  # before peft, which imports it (see there)
    from peft import PeftModel

    folder = Path(folder)
    meta = read_llara_meta(folder)
    data = meta["dataset"]
    if dataset is None:
        data_dir = resolve_path(data["data_dir"], folder) if data.get("data_dir") else None
        moved = data_dir is not None and not Path(data_dir).is_dir()
        if moved:  # trained on another machine: found the usual way ($LLARA_LASTFM_DIR, the cache, a download)
            data_dir = None
        dataset = load_dataset(data["name"], data_dir=data_dir, split=data.get("split", "paper"),
                               seed=data.get("split_seed", 0))
        if moved and data.get("fingerprint") and dataset.fingerprint() != data["fingerprint"]:
            raise CheckpointError(f"{folder} was trained on {data['name']} data that differs from what was found here "
                                  f"(fingerprint {dataset.fingerprint()[:12]}, trained on {data['fingerprint'][:12]})")
    if dataset.n_items != data["n_items"]:
        raise CheckpointError(f"{folder} was trained on {data['n_items']} items but the dataset has {dataset.n_items}")
    rec_stem = resolve_path(meta["recommender"]["path"], folder)
    rec_json = Path(str(rec_stem) + ".json")
    if not rec_json.is_file():
        raise CheckpointError(f"{folder} needs the recommender checkpoint {rec_stem} (.json/.safetensors), which is missing")
    if read_json(rec_json).get("weights_sha256") != meta["recommender"]["weights_sha256"]:
        raise CheckpointError(f"the recommender at {rec_stem} is not the one {folder} was trained with (weights hash differs)")
    proj = meta["projector"]
    precision = precision or meta["precision"]
    merged = merge and not trainable and (folder / "adapter").is_dir()
    if precision == "int8" and trainable:
        raise ValueError("int8 is for inference only: load with --precision nf4, bf16 or fp32 to train")
    base = str(merged_base(folder, meta, dataset, precision)) if merged else meta["base_model"]
    model = build_llara(dataset, str(rec_stem), base_model=base, precision=precision, projector_spec=proj["spec"],
                        norm_to_tokens=False, device=device, **model_options(meta.get("config", {})))
    if model.projector.d_out != proj["d_out"] or model.projector.d_in != proj["d_in"]:
        raise CheckpointError(f"{folder}'s projector maps {proj['d_in']}->{proj['d_out']} but the base model needs "
                              f"{model.projector.d_in}->{model.projector.d_out}")
    model.projector.target_norm = proj.get("target_norm")
    model.projector.load_state_dict(load_tensors(folder / "projector.safetensors"))
    for name in OPTIONAL_PARTS:
        if getattr(model, name) is not None:
            getattr(model, name).load_state_dict(load_tensors(folder / f"{name}.safetensors"))
    if model.user_projector is not None:
        model.user_projector.target_norm = model.projector.target_norm
    if (folder / "token_rows.safetensors").is_file() and not merged:  # merged: the rows are in the saved embedding
        rows = load_tensors(folder / "token_rows.safetensors")
        if precision == "int8":  # int8 serves a bf16 base: rows rounded as the merged path's saved embedding rounds
            rows["rows"] = rows["rows"].to(torch.bfloat16)  # them, so two models' equal rows can be held once
        try:
            model.load_placeholder_rows(rows)
        except ValueError as err:
            raise CheckpointError(f"{folder}: {err} (a different base model or tokenizer?)") from err
    if (folder / "adapter").is_dir() and not merged:
        if precision == "int8":  # peft cannot wrap int8 layers: the update runs beside them, and they stay shareable
            attach_side_lora(model.llm, folder / "adapter")
        else:  # torch_device: peft would otherwise read the adapter onto whatever device it finds first (a GPU)
            model.llm = PeftModel.from_pretrained(model.llm, str(folder / "adapter"), is_trainable=trainable,
                                                  torch_device=str(model.device))
    # an inference model is never differentiated with respect to its weights (attributions differentiate inputs)
    return (model if trainable else model.requires_grad_(False).eval()), meta, dataset


def share_identical_weights(model: torch.nn.Module, reference: torch.nn.Module) -> int:
    """Point every frozen floating-point parameter of ``model`` that equals ``reference``'s parameter of the same
    name (shape, dtype, device and values) at that parameter, so two loaded models hold it once; returns the bytes
    freed. The demo's text-only and hybrid models share their base model's token embeddings this way (~54 MB:
    their LoRA adapters leave the embedding alone). Tied weights stay tied: every name of a tied parameter is
    repointed. 4-bit weights are never shared (each layer's quantization state is its own)."""
    ours = dict(reference.named_parameters(remove_duplicate=False))
    freed: dict[int, int] = {}
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        ref = ours.get(name)
        if (ref is None or ref is param or param.requires_grad or ref.requires_grad or not param.is_floating_point()
                or type(param) is not type(ref) or param.shape != ref.shape or param.dtype != ref.dtype
                or param.device != ref.device or not torch.equal(param, ref)):
            continue
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = ref
        freed[param.untyped_storage().data_ptr()] = param.untyped_storage().nbytes()
    return sum(freed.values())


def merged_base(folder, meta: dict, dataset, precision: str):
    """A transformers folder holding the checkpoint's base model with its LoRA update merged in, built once.

    Cached under ``<cache>/merged/<checkpoint>-<hash of its files>-<dtype>`` (fp32 for an fp32 model, else bf16,
    which nf4 then quantizes), written to a temporary folder and renamed, so a killed build is never reused."""
    dtype = "fp32" if precision == "fp32" else "bf16"
    # the base weights' origin joins the key only when it is not the packaged default, so existing caches stay valid
    files = json.dumps(meta.get("files", {}), sort_keys=True) + base_model_origin(meta["base_model"])
    key = hashlib.sha256(files.encode()).hexdigest()[:12]
    target = cache_root() / "merged" / f"{Path(folder).name}-{key}-{dtype}"
    manifest = target / "llara_merged.json"
    if manifest.is_file():
        try:
            hashes = read_json(manifest)["files"]
            if all(sha256_file(target / name) == digest for name, digest in hashes.items()):
                return target
        except (CheckpointError, KeyError, OSError):
            pass
        say(f"the merged-weights cache {target} is damaged (a file differs from its hash): rebuilding it")
        stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    elif target.exists():  # no manifest: an interrupted or foreign folder; never trusted
        shutil.rmtree(target, ignore_errors=True)
    say(f"merging the LoRA adapter of {folder} into the base model once ({target})")
    model, _, _ = load_llara(str(folder), dataset=dataset, precision=dtype)
    # the base weights are views of the mapped safetensors file: merging in place would copy-on-write it page by
    # page (1.4 s per model here); one copy first makes the merge 0.4 s
    detach_from_file(model.llm)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        # the folder holds the dtype its name says, whatever the merge computed in (float32 on a CPU without bf16)
        model.llm.merge_and_unload().to(torch.float32 if dtype == "fp32" else torch.bfloat16).save_pretrained(work)
        model.tokenizer.save_pretrained(work)
        write_json(work / "llara_merged.json", {"checkpoint": str(folder), "dtype": dtype,
                                                 "files": {f.name: sha256_file(f) for f in sorted(work.iterdir())}})
        try:
            work.rename(target)
        except OSError:
            if not (target / "llara_merged.json").is_file():  # lost a race to another process building the same: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
