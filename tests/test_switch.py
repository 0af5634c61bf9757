"""The dataset switch on toy checkpoints: the registry holds one dataset's models at a time, switching loads the
other and releases the first, a session whose dataset was released gets it back on its next request, and a dataset
that cannot be served is shown as unavailable with how to get it (never a traceback)."""
from __future__ import annotations

import json
import shutil

import gradio as gr
import pytest

from app import build_demo, charts, handlers, switch
from app.layout import layout
from app.state import Offer, Studio, Studios
from app.wording import words_for
from llara.serving.demo_datasets import DEMO_DATASETS, DemoDataset, OneAtATime, parse_offered, unavailable

from .conftest import load_app_module, served_client

pytestmark = pytest.mark.usefixtures("llara_cache")


# ---- the registry -------------------------------------------------------------------------------------------

def test_one_at_a_time_holds_one_and_reloads_what_it_released():
    loads, released, told = [], [], []
    reg = OneAtATime(lambda name: loads.append(name) or {"name": name}, release=lambda: released.append(True))
    a = reg.get("a", told.append)
    assert reg.get("a", told.append) is a and loads == ["a"] and told == ["a"]  # held: no second load, no message
    reg.get("b")
    assert reg.held == ["b"] and released == [True]  # "a" was released before "b" loaded
    assert reg.get("a", told.append) is not a and loads == ["a", "b", "a"] and told == ["a", "a"]
    two = OneAtATime(lambda name: name, keep=2, release=lambda: released.append(True))
    for name in ("a", "b", "a", "c"):  # the least recently used goes first
        two.get(name)
    assert two.held == ["a", "c"]
    with pytest.raises(ValueError, match="at least 1"):
        OneAtATime(lambda name: name, keep=0)


def test_parse_offered():
    assert parse_offered("lastfm, MovieLens,lastfm") == ["lastfm", "movielens"]
    with pytest.raises(ValueError, match="unknown demo dataset 'steam'"):
        parse_offered("movielens,steam")


@pytest.fixture(scope="module")
def loads():
    return []


@pytest.fixture(scope="module")
def two(toy_checkpoint, loads) -> Studios:
    """The toy checkpoint offered under two names ("toy-a" opens the page), and a third dataset that is missing."""
    def load(name: str) -> Studio:
        loads.append(name)
        return Studio.load(toy_checkpoint, precision="fp32")

    return Studios([Offer("toy-a", "Toy A", "artist"), Offer("toy-b", "Toy B", "artist"),
                    Offer("gone", "Gone", "movie", "Gone: get it with --download")], load)


def test_switching_loads_one_dataset_at_a_time(two, loads):
    a = two.studio("toy-a")
    assert two.studio(None) is a and two.registry.held == ["toy-a"]  # None: the default, already held
    b = two.studio("toy-b")
    assert b is not a and two.registry.held == ["toy-b"] and loads[-2:] == ["toy-a", "toy-b"]
    with pytest.raises(ValueError, match="get it with --download"):
        two.studio("gone")
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        two.studio("nope")


def test_a_session_whose_dataset_was_released_gets_it_back_and_is_told(two, loads, monkeypatch):
    told = []
    monkeypatch.setattr(gr, "Info", told.append)
    two.studio("toy-b")  # another session switched to b: a is released
    before = len(loads)
    studio = switch.session_studio(two, "toy-a")
    assert two.registry.held == ["toy-a"] and loads[before:] == ["toy-a"]
    assert len(told) == 1 and "Loading the Toy A models again" in told[0] and "another session" in told[0]
    assert switch.session_studio(two, "toy-a") is studio and len(told) == 1  # held now: no message
    with pytest.raises(gr.Error, match="get it with --download"):
        switch.session_studio(two, "gone")


def test_the_switch_refills_the_page_and_refuses_an_unavailable_dataset(two, monkeypatch):
    warned = []
    monkeypatch.setattr(gr, "Warning", warned.append)
    studio = two.studio("toy-a")
    with gr.Blocks():
        ui = layout(studio, two)
    out = switch.switch(two, ui, "toy-b", "toy-a", progress=lambda *a, **k: None)
    assert out[ui.dataset] == "toy-b" and out[ui.request] is None and two.registry.held == ["toy-b"]
    history = out[ui.history]
    assert history.label.startswith("Artists listened to, oldest first") and len(history.choices) == studio.dataset.n_items
    assert out[ui.text_head].value == "*press Predict*" and out[ui.truth].value == ""
    out = switch.switch(two, ui, "gone", "toy-b", progress=lambda *a, **k: None)
    assert list(out) == [ui.choice] and out[ui.choice].value == "toy-b"  # the session stays where it was
    assert warned == ["Gone: get it with --download"]
    assert switch.switch(two, ui, "toy-b", "toy-b") == {}


def test_the_page_names_unavailable_datasets_and_serves_the_default(two):
    demo = build_demo(two)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    labels = [label for label, _ in blocks["dataset"].choices]
    assert labels == ["Toy A", "Toy B", "Gone: unavailable here"]
    assert "Gone: get it with --download" in blocks["dataset-note"].value
    with served_client(two) as client:  # the HTTP API answers on the default dataset (the session's state)
        history, cands, _ = client.predict(str(two.studio("toy-a").dataset.test[0].user), 0, api_name="/load_test_user")
        assert "Predicted in" in client.predict(history, cands, "head", "none", 0, api_name="/predict")[6]
    single = build_demo(two.studio("toy-a"))  # one studio: no switch
    assert "dataset" not in {b.elem_id for b in single.blocks.values()}


def test_examples_follow_the_dataset(studio):
    with pytest.raises(gr.Error, match="No example 0"):  # the toy catalog has none of the demo's examples
        switch.pick_example(studio, 0)
    assert studio.examples == []


# ---- availability -------------------------------------------------------------------------------------------

def test_a_dataset_without_its_models_says_which(tmp_path):
    spec = DemoDataset("lastfm", "LastFM (artists)", tmp_path / "lastfm-missing", None)
    assert "lastfm-missing is not here" in unavailable(spec)


def test_lastfm_without_its_data_says_how_to_get_it(toy_checkpoint, tmp_path, monkeypatch):
    moved = tmp_path / "ckpt"
    shutil.copytree(toy_checkpoint, moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["dataset"]["data_dir"] = str(tmp_path / "elsewhere")  # trained on another machine
    (moved / "meta.json").write_text(json.dumps(meta))
    monkeypatch.delenv("LLARA_LASTFM_DIR", raising=False)
    monkeypatch.setenv("LLARA_DOWNLOAD", "0")
    spec = DemoDataset("lastfm", "LastFM (artists)", moved, None)
    reason = unavailable(spec)
    assert reason.startswith("LastFM (artists): ") and "LLARA_LASTFM_DIR" in reason and "--download" in reason
    monkeypatch.setenv("LLARA_DOWNLOAD", "1")  # a download is allowed: offered, fetched (and checked) on first use
    assert unavailable(spec) is None
    monkeypatch.setenv("LLARA_DOWNLOAD", "0")
    monkeypatch.setenv("LLARA_LASTFM_DIR", meta["dataset"]["data_dir"].replace("elsewhere", "nowhere"))
    assert "LLARA_LASTFM_DIR" in unavailable(spec)  # named but not a folder
    studios = Studios([Offer("movielens", "MovieLens", "movie"), Offer("lastfm", "LastFM", "artist", reason)],
                      lambda name: None)
    assert studios.default == "movielens" and studios.offers["lastfm"].reason == reason
    with pytest.raises(ValueError, match="no dataset can be served"):
        Studios([Offer("lastfm", "LastFM", "artist", reason)], lambda name: None)


def test_the_demo_table_and_the_command_line(capsys):
    assert list(DEMO_DATASETS) == ["movielens", "lastfm"]
    assert all(len(ex) >= 2 for spec in DEMO_DATASETS.values() for ex in spec.examples)
    main = load_app_module().main
    with pytest.raises(SystemExit):
        main(["--datasets", "movielens,steam"])
    assert "unknown demo dataset 'steam'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--keep-datasets", "0"])
    assert "--keep-datasets must be >= 1" in capsys.readouterr().err


# ---- wording ------------------------------------------------------------------------------------------------

def test_the_movie_wording_is_the_one_the_page_always_had(studio):
    from app import wording

    movie, artist = words_for("movie"), words_for("artist")
    assert wording.intro(movie, "GRU4Rec").startswith("Pick the movies a user watched, in order. LLaRA lists each "
                                                      "movie in its prompt")
    assert wording.intro(artist, "GRU4Rec").startswith("Pick the artists a user listened to, in order.")
    assert wording.method_labels(movie)["deletion"] == "item: delete the movie, rebuild the prompt"
    assert charts.chart_label("text", movie) == "Per watched movie: text-only prompt"
    assert charts.explaining("deletion", movie)[-1] == "*Explaining both prompts (one pass per watched movie) ...*"
    with pytest.raises(gr.Error, match=r"Pick at least one artist listened to\."):  # the toy catalog: artists
        handlers.predict(studio, [], [], "rank", "none", 0, None)
