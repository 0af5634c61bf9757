"""Description search over the catalog with the packaged all-MiniLM-L6-v2 encoder (real model, ~1 s to load)."""
from __future__ import annotations

import pytest

from llara.data import load_dataset
from llara.search import CatalogSearch, item_text, main


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
