"""Where a dataset in the original release's format (LastFM) comes from when no ``--data-dir`` is given.

No package registry carries LastFM, so the lookup order of ``llara.sources`` becomes:

1. the folder ``$LLARA_LASTFM_DIR`` names (the release's layout: ``id2name.txt`` + ``train/val/test.jsonl``, or the
   release's ``train_data.df`` / ``Val_data.df`` / ``Test_data.df`` pickles, read only with ``--allow-pickle``);
2. a copy converted earlier into the cache (``<cache>/datasets/lastfm``);
3. a download, where allowed (``LLARA_DOWNLOAD=1``, ``python app.py --download``, or on a Hugging Face Space):
   the release's files from the Hugging Face Hub (``joyliao7777/LLaRA``, the dataset the paper's authors published),
   each checked against its SHA-256 below *before* anything is unpickled, then converted once into JSONL in the
   cache, so nothing is unpickled again;
4. else an error that names all three ways.

    LLARA_LASTFM_DIR=path/to/lastfm python app.py          # a folder you have
    python app.py --download                               # fetch, check and convert the release once
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..sources import SourceUnavailable, cache_root, download_hint, downloads_allowed, hub_snapshot, local_dir, say
from .movielens import DatasetUnavailable
from .release import JSONL_FILES, PICKLE_FILES, rows_from_pickle

RELEASES: dict[str, dict] = {
    "lastfm": {
        "env": "LLARA_LASTFM_DIR",
        "repo": "joyliao7777/LLaRA",
        "what": "the LastFM split of the LLaRA release",
        # SHA-256 of the release's files (the same rows as the paper's LastFM experiments)
        "sha256": {
            "id2name.txt": "b608bcf14300b1608ccd88f4fe240e6345125201ecdb55157395c19787fe4eaf",
            "train_data.df": "7db71a60d3da4c449091fbc254efc9602f81eec6eb9a60534811ccd61974dbc1",
            "Val_data.df": "92a1ddb65ebdeff999f910b65660eb3d8c7cd85e6a19308d80c429481839f8b3",
            "Test_data.df": "cac058a2842b2a3ed4d39ed1fa0a742f5034a23c9851a2ffc157b4845d703570",
        },
    },
}
MARKER = "llara_release.json"  # written last into a converted copy: a folder without it is never trusted


def _sha256(path: Path) -> str:
    from ..checkpoint import sha256_file

    return sha256_file(path)


def release_dir(name: str) -> Path:
    """The folder to read dataset ``name`` from (see the module docstring for the order); DatasetUnavailable (which
    every command reports as an error) naming every way to provide it when there is none."""
    spec = RELEASES.get(name)
    if spec is None:
        raise DatasetUnavailable(f"dataset {name!r} has no known source: pass --data-dir with a folder in the "
                                "original release's format")
    try:
        named = local_dir(spec["env"])
    except SourceUnavailable as err:  # named but not a folder
        raise DatasetUnavailable(str(err)) from err
    if named is not None:
        return named
    cached = cache_root() / "datasets" / name
    if (cached / MARKER).is_file():
        return cached
    if not downloads_allowed():
        raise DatasetUnavailable(
            f"dataset {name!r} ({spec['what']}) is not on any package registry: pass --data-dir DIR or set "
            f"{spec['env']}=DIR (a folder "
            f"with id2name.txt and train/val/test.jsonl, or the release's .df files with --allow-pickle), or "
            f"{download_hint()} to fetch the release from the Hugging Face Hub ({spec['repo']}), checked against "
            "its SHA-256 and converted once into the cache")
    try:
        snapshot = hub_snapshot(spec["repo"], spec["what"], allow_patterns=[f"*{name}/*"])
    except SourceUnavailable as err:
        raise DatasetUnavailable(str(err)) from err
    return convert_release(find_release_folder(snapshot, spec["sha256"]), cached, spec["sha256"])


def find_release_folder(root: Path, hashes: dict[str, str]) -> Path:
    """The folder under ``root`` that holds every file of ``hashes`` (the Hub repository's layout is not fixed)."""
    first = next(iter(hashes))
    for candidate in sorted(root.rglob(first)):
        if all((candidate.parent / f).is_file() for f in hashes):
            return candidate.parent
    raise DatasetUnavailable(f"the download at {root} has no folder with {', '.join(hashes)}")


def convert_release(source: Path, target: Path, hashes: dict[str, str]) -> Path:
    """Check every file of ``source`` against ``hashes`` (before anything is unpickled), then write ``target`` with
    ``id2name.txt`` and one JSONL file per split, atomically (a temporary folder renamed at the end)."""
    for name, want in hashes.items():
        got = _sha256(source / name)
        if got != want:
            raise DatasetUnavailable(f"{source / name} is not the released file (SHA-256 {got}, expected {want}): "
                                    "nothing was unpickled; remove the download and try again")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        shutil.copyfile(source / "id2name.txt", work / "id2name.txt")
        for split, pickle_name in PICKLE_FILES.items():
            with open(work / JSONL_FILES[split], "w", encoding="utf-8") as out:
                for _, row in rows_from_pickle(source / pickle_name):  # hashes checked above: the released pickles
                    out.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
        (work / MARKER).write_text(json.dumps({"source": str(source), "sha256": hashes}, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"converted {source} into {target} (JSONL; the pickles are not read again)")
    return target


def _plain(value: object) -> object:
    """A pandas/numpy cell as plain JSON: arrays and tuples as lists of ints, numpy scalars as ints."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value) if isinstance(value, (int, float)) or hasattr(value, "__index__") else value
