"""Description search over the catalog with the packaged all-MiniLM-L6-v2 encoder (real model, ~1 s to load)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from llara.data import load_dataset
from llara.data.search import CatalogSearch, item_text, main

from .conftest import SHARED_LASTFM


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    return CatalogSearch(load_dataset("movielens").catalog, cache_dir=tmp_path_factory.mktemp("search"))


def test_finds_movies_by_what_they_are(search):
    hits = search.search("a science fiction space adventure", k=5)
    assert len(hits) == 5 and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert all("Sci-Fi" in search.catalog.genres[i] or "Adventure" in search.catalog.genres[i] for i, _ in hits)
    titles = [search.catalog.titles[i] for i, _ in search.search("Star Wars", k=3)]
    assert "Star Wars" in titles


def test_exclude_and_cache(search):
    first = search.search("animated family film", k=3)
    again = search.search("animated family film", k=3, exclude={first[0][0]})
    assert first[0][0] not in {i for i, _ in again} and again[0] == first[1]
    assert search.cache_path.is_file() and len(list(search.cache_path.parent.glob("*.npy"))) == 1  # the item matrix is cached once and reused by the next start
    reloaded = CatalogSearch(search.catalog, cache_dir=search.cache_path.parent.parent)
    assert (reloaded.matrix == search.matrix).all()


@pytest.mark.parametrize("query, message", [("", "describe"), ("   ", "describe"), ("x" * 501, "under 500")])
def test_bad_queries(search, query, message):
    with pytest.raises(ValueError, match=message):
        search.search(query)


def test_item_text_has_year_and_genres():
    cat = load_dataset("movielens").catalog
    assert item_text(cat, 0).startswith("Toy Story (1995). ") and "Animation" in item_text(cat, 0)


def test_cli(capsys):
    assert main(["heist thriller", "--top", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    with pytest.raises(SystemExit):
        main(["", "--top", "3"])


def test_the_shipped_vectors_match_the_catalog_and_a_fresh_encoding(search):
    # the module's search encoded MovieLens into a temp cache: the committed copy holds the same vectors
    from llara.data.search import SHIPPED_VECTORS

    shipped = SHIPPED_VECTORS / search.cache_path.name
    assert shipped.is_file(), f"refresh the shipped copy: cp {search.cache_path} {SHIPPED_VECTORS}/"
    np.testing.assert_allclose(np.load(shipped), search.matrix, atol=1e-5)


def test_a_first_start_reads_the_shipped_vectors_without_the_encoder(monkeypatch, tmp_path):
    import sentence_transformers

    from llara.data import search as search_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded although the vectors ship with the repository")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refuse)
    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))  # an empty cache: a first start
    catalog = load_dataset("movielens").catalog
    matrix, path = search_mod.catalog_vectors(catalog)
    assert path.parent == search_mod.SHIPPED_VECTORS and matrix.shape == (len(catalog), 384)
    assert not (tmp_path / "search").exists()  # nothing written: the shipped copy is read in place


def test_the_lastfm_catalog_has_shipped_vectors(monkeypatch):
    # LastFM's vectors are encoded from the release's artist names; its file name must match its texts' hash
    from llara.data import DatasetUnavailable
    from llara.data.search import SHIPPED_VECTORS, encoder_folder, vectors_file

    if SHARED_LASTFM.is_dir() and not os.environ.get("LLARA_LASTFM_DIR"):
        monkeypatch.setenv("LLARA_LASTFM_DIR", str(SHARED_LASTFM))
    try:
        catalog = load_dataset("lastfm").catalog
    except DatasetUnavailable as err:
        pytest.skip(f"LastFM is not available here: {err}")
    texts = [item_text(catalog, i) for i in range(len(catalog))]
    shipped = SHIPPED_VECTORS / vectors_file(texts, encoder_folder())
    assert shipped.is_file()
    assert np.load(shipped).shape == (len(catalog), 384)
