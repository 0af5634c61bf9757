"""The dataset-switch memory bench: the order a visitor switches in, and that a replaced pair is really let go."""
from __future__ import annotations

import gc
import weakref

import pytest

from llara.measurement.bench_table import format_table
from llara.measurement.switching import demo_switch, switch_memory, switch_order


class Models:
    """Stands in for a dataset's pair of loaded models."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked = 0


def test_switch_order_goes_back_and_forth_and_ends_where_it_started():
    assert switch_order(["movielens", "lastfm"], 2) == ["movielens", "lastfm", "movielens", "lastfm", "movielens"]
    with pytest.raises(ValueError, match="at least two datasets"):
        switch_order(["movielens"], 2)
    with pytest.raises(ValueError, match="one cycle"):
        switch_order(["movielens", "lastfm"], 0)


def test_each_switch_releases_the_pair_it_replaces():
    loaded: list[weakref.ref] = []
    alive_when_asked: list[int] = []

    def load(name: str) -> Models:
        value = Models(name)
        loaded.append(weakref.ref(value))
        return value

    def ask(value: Models) -> None:
        value.asked += 1
        gc.collect()
        alive_when_asked.append(sum(ref() is not None for ref in loaded))

    res = switch_memory(load, switch_order(["a", "b"], 2), ask, release=gc.collect)
    assert [s["dataset"] for s in res["steps"]] == ["a", "b", "a", "b", "a"]
    assert [s["held"] for s in res["steps"]] == [["a"], ["b"], ["a"], ["b"], ["a"]]
    assert len(loaded) == 5  # one load per switch: nothing was held over
    assert alive_when_asked == [1, 1, 1, 1, 1]  # the bench itself never keeps the replaced pair alive
    assert res["rss_max_mb"] >= res["steps"][0]["rss_after_load_mb"] > 0
    table = format_table({"switch": {**res, "precision": "nf4", "predicts": 1}})
    assert "dataset switch (nf4" in table and "| 5. a |" in table


def test_keep_two_holds_both_datasets_and_loads_each_once():
    calls: list[str] = []
    res = switch_memory(lambda n: calls.append(n) or Models(n), switch_order(["a", "b"], 2), lambda v: None, keep=2,
                        release=gc.collect)
    assert calls == ["a", "b"] and res["steps"][-1]["held"] == ["b", "a"]


def test_the_demo_switch_refuses_an_unknown_dataset_before_loading_anything():
    with pytest.raises(ValueError, match="unknown demo dataset 'imdb'"):
        demo_switch(["movielens", "imdb"])
