"""Checkpoint files: safetensors weights and JSON metadata, written atomically, verified on load.

Weights are never pickled. A crash mid-write leaves the previous file intact (write to a temporary file in the
same folder, fsync, rename). Metadata records a SHA-256 of each weights file, so a truncated or tampered file
fails loudly instead of loading half a model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, tampered with, or does not fit what it is loaded into."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; checkpoints and results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty JSON, written atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    _atomic_write(Path(path), lambda fh: fh.write(data))


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupted?): {err}") from err


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> str:
    """Save tensors as safetensors atomically; returns the file's SHA-256 for the metadata."""
    path = Path(path)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    _atomic_write(path, lambda fh: fh.write(blob))
    return hashlib.sha256(blob).hexdigest()


def load_tensors(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors; with ``expected_sha256``, refuse a file whose content changed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(f"{path} does not match the SHA-256 in its metadata (truncated or modified): {actual[:12]} != {expected_sha256[:12]}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {err}") from err


# ---- LLaRA checkpoints: LoRA adapter + projector + meta.json ------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
# trained modules besides the adapter and the projector, each saved as <name>.safetensors when the model has it
OPTIONAL_PARTS = ("head", "user_projector", "next_head")
LLARA_FORMAT = "llara-checkpoint/1"


def portable_path(path: str | Path) -> str:
    """A path relative to the repository when it lies inside it, so committed checkpoints work from any clone."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def resolve_path(path: str, base: Path | None = None) -> Path:
    """Inverse of ``portable_path``: relative paths are tried against the repository, then ``base``."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for root in (REPO_ROOT, base):
        if root is not None and (root / candidate).exists():
            return root / candidate
    return REPO_ROOT / candidate


def save_llara(folder: str | Path, model, meta: dict[str, Any], trainer_state: dict | None = None) -> Path:
    """Write a LLaRA checkpoint folder atomically.

    Layout: ``adapter/`` (PEFT LoRA adapter, safetensors), ``projector.safetensors``, ``meta.json`` (config,
    projector spec, recommender reference, file hashes) and, for resuming, ``trainer_state.pt`` (optimizer and
    scheduler state; loaded with ``weights_only=True``). The folder is written beside the target and renamed into
    place, so a crash leaves the previous checkpoint intact. The projector is always saved.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        files: dict[str, str] = {}
        if hasattr(model.llm, "peft_config"):
            # The embedding matrix was resized for the placeholder tokens; PEFT would then save all of it (~56 MB
            # for SmolLM2). Only the placeholder rows differ from the base model: they go to token_rows.safetensors.
            model.llm.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False)
            for f in sorted((tmp / "adapter").iterdir()):
                files[f"adapter/{f.name}"] = sha256_file(f)
        files["projector.safetensors"] = save_tensors(tmp / "projector.safetensors", model.projector.state_dict())
        files["token_rows.safetensors"] = save_tensors(tmp / "token_rows.safetensors", model.placeholder_rows())
        for name in OPTIONAL_PARTS:
            if getattr(model, name, None) is not None:
                files[f"{name}.safetensors"] = save_tensors(tmp / f"{name}.safetensors", getattr(model, name).state_dict())
        if trainer_state is not None:
            import io

            buffer = io.BytesIO()
            torch.save(trainer_state, buffer)
            _atomic_write(tmp / "trainer_state.pt", lambda fh: fh.write(buffer.getvalue()))
        write_json(tmp / "meta.json", {"format": LLARA_FORMAT, **meta, "projector": model.projector.config(), "files": files})
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp/mkstemp create owner-only files; a checkpoint is for sharing
            path.chmod(0o755 if path.is_dir() else 0o644)
        old = _old_copy(folder)
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old.exists() and not folder.exists():  # put the previous checkpoint back before reporting
                os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _old_copy(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def restore_interrupted(folder: str | Path) -> None:
    """A process killed between ``save_llara``'s two renames leaves the previous checkpoint at ``.<name>.old`` and
    nothing at ``<name>``: put it back (called before every load and resume)."""
    folder = Path(folder)
    old = _old_copy(folder)
    if not folder.exists() and (old / "meta.json").is_file():
        os.replace(old, folder)


def read_llara_meta(folder: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint, with every listed file present and matching its hash."""
    folder = Path(folder)
    restore_interrupted(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    meta = read_json(folder / "meta.json")
    if meta.get("format") != LLARA_FORMAT:
        raise CheckpointError(f"{folder}/meta.json is not a {LLARA_FORMAT} checkpoint (format={meta.get('format')!r})")
    missing = [k for k in ("base_model", "precision", "dataset", "recommender", "projector") if k not in meta]
    if missing:
        raise CheckpointError(f"{folder}/meta.json lacks {', '.join(missing)} (edited by hand or truncated?)")
    for name, digest in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"missing checkpoint file {path}")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} does not match the SHA-256 in meta.json (truncated or modified)")
    return meta


def load_trainer_state(folder: str | Path) -> dict | None:
    path = Path(folder) / "trainer_state.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path} cannot be read safely (truncated or not a trainer state): {err}") from err


# ---- rebuilding a model from a checkpoint -----------------------------------------------------------------------

def load_llara(folder: str, dataset=None, precision: str | None = None, trainable: bool = False, merge: bool = False):
    """Rebuild a trained LLaRA from a checkpoint folder; returns ``(model, meta, dataset)``.

    Checks every file against ``meta.json`` and the recommender and dataset against what the checkpoint was
    trained with, so a mismatch fails here with a clear message rather than as garbage predictions.
    ``merge`` (inference only): run on the base model with the LoRA update folded into its weights (see
    ``merged_base``): no adapter overhead per layer, and for nf4 the merged weights are what gets quantized.
    """
    from peft import PeftModel

    from .data import load_dataset
    from .model import build_llara, model_options

    folder = Path(folder)
    meta = read_llara_meta(folder)
    data = meta["dataset"]
    if dataset is None:
        data_dir = resolve_path(data["data_dir"], folder) if data.get("data_dir") else None
        dataset = load_dataset(data["name"], data_dir=data_dir, split=data.get("split", "paper"),
                               seed=data.get("split_seed", 0))
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
    base = str(merged_base(folder, meta, dataset, precision)) if merged else meta["base_model"]
    model = build_llara(dataset, str(rec_stem), base_model=base, precision=precision,
                        projector_spec=proj["spec"], norm_to_tokens=False, **model_options(meta.get("config", {})))
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
        try:
            model.load_placeholder_rows(load_tensors(folder / "token_rows.safetensors"))
        except ValueError as err:
            raise CheckpointError(f"{folder}: {err} (a different base model or tokenizer?)") from err
    if (folder / "adapter").is_dir() and not merged:
        model.llm = PeftModel.from_pretrained(model.llm, str(folder / "adapter"), is_trainable=trainable)
    return (model if trainable else model.eval()), meta, dataset


def merged_base(folder, meta: dict, dataset, precision: str):
    """A transformers folder holding the checkpoint's base model with its LoRA update merged in, built once.

    Cached under ``<cache>/merged/<checkpoint>-<hash of its files>-<dtype>`` (fp32 for an fp32 model, else bf16,
    which nf4 then quantizes), written to a temporary folder and renamed, so a killed build is never reused."""
    from .llm import _say, cache_root

    dtype = "fp32" if precision == "fp32" else "bf16"
    key = hashlib.sha256(json.dumps(meta.get("files", {}), sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / "merged" / f"{Path(folder).name}-{key}-{dtype}"
    manifest = target / "llara_merged.json"
    if manifest.is_file():
        try:
            hashes = read_json(manifest)["files"]
            if all(sha256_file(target / name) == digest for name, digest in hashes.items()):
                return target
        except (CheckpointError, KeyError, OSError):
            pass
        _say(f"the merged-weights cache {target} is damaged (a file differs from its hash): rebuilding it")
        stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    elif target.exists():  # no manifest: an interrupted or foreign folder; never trusted
        shutil.rmtree(target, ignore_errors=True)
    _say(f"merging the LoRA adapter of {folder} into the base model once ({target})")
    model, _, _ = load_llara(str(folder), dataset=dataset, precision=dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.llm.merge_and_unload().save_pretrained(work)
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
