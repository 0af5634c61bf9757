"""Checkpoint files: safetensors weights and JSON metadata, written atomically, verified on load.

Weights are never pickled. A crash mid-write leaves the previous file intact (write to a temporary file in the
same folder, fsync, rename). Metadata records a SHA-256 of each weights file, so a truncated or tampered file
fails loudly instead of loading half a model.
"""
from __future__ import annotations

import hashlib
import json
import os
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
