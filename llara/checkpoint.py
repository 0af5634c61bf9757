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

from .constants import REPO_ROOT


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


def save_llara(folder: str | Path, model, meta: dict[str, Any], trainer_state: dict | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a LLaRA checkpoint folder atomically.

    Layout: ``adapter/`` (PEFT LoRA adapter, safetensors), ``projector.safetensors``, ``meta.json`` (config,
    projector spec, recommender reference, file hashes) and, for resuming, ``trainer_state.pt`` (optimizer and
    scheduler state; loaded with ``weights_only=True``). The folder is written beside the target and renamed into
    place, so a crash leaves the previous checkpoint intact. The projector is always saved.
    ``state_dict``: the model's full state gathered from a sharded (FSDP) run, whose modules hold only shards;
    every part is then read from it instead of from ``model``.
    """
    def part(name: str) -> dict[str, torch.Tensor]:
        module = getattr(model, name)
        if state_dict is None:
            return module.state_dict()
        return {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(f"{name}.")}

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        files: dict[str, str] = {}
        if hasattr(model.llm, "peft_config"):
            # The embedding matrix was resized for the placeholder tokens; PEFT would then save all of it (~56 MB
            # for SmolLM2). Only the placeholder rows differ from the base model: they go to token_rows.safetensors.
            model.llm.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False,
                                      state_dict=None if state_dict is None else part("llm"))
            for f in sorted((tmp / "adapter").iterdir()):
                files[f"adapter/{f.name}"] = sha256_file(f)
        files["projector.safetensors"] = save_tensors(tmp / "projector.safetensors", part("projector"))
        if state_dict is None:
            rows = model.placeholder_rows()
        else:  # the rows of the gathered input embedding matrix, found by the module's name inside the LLM
            name = next(n for n, m in model.llm.named_modules() if m is model.llm.get_input_embeddings())
            rows = model.placeholder_rows(state_dict[f"llm.{name}.weight"])
        files["token_rows.safetensors"] = save_tensors(tmp / "token_rows.safetensors", rows)
        for name in OPTIONAL_PARTS:
            if getattr(model, name, None) is not None:
                files[f"{name}.safetensors"] = save_tensors(tmp / f"{name}.safetensors", part(name))
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
