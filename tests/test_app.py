"""The demo: handlers called directly, and the served app driven over HTTP with gradio_client."""
from __future__ import annotations

import socket

import gradio as gr
import pytest

from app import build_demo, handlers
from app.state import Studio, item_labels


@pytest.fixture(scope="module")
def studio() -> Studio:
    return Studio.load()


def test_labels_are_unique(studio):
    assert len(set(studio.labels)) == len(studio.labels) == studio.dataset.n_items
    assert studio.labels[0] == "Toy Story (1995)"
    assert item_labels(studio.dataset) == studio.labels


def test_recommend_returns_ranked_unseen_movies(studio):
    history = ["Toy Story (1995)", "Aladdin (1992)", "The Lion King (1994)"]
    rows, status = handlers.recommend(studio, history, next(iter(studio.recommenders)), 5)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert not set(r[1] for r in rows) & set(history)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert "given 3 watched" in status


def test_more_than_ten_keeps_the_last_ten(studio):
    history = studio.labels[:12]
    items, note = handlers.parse_history(studio, history)
    assert items == list(range(2, 12)) and "10 most recent of the 12" in note


@pytest.mark.parametrize(
    "history, message",
    [([], "Pick at least one"), (None, "Pick at least one"), (["No Such Movie (2031)"], "Not in the catalog"),
     ("Toy Story (1995)", "must be a list")],
)
def test_bad_history(studio, history, message):
    with pytest.raises(gr.Error, match=message):
        handlers.recommend(studio, history, next(iter(studio.recommenders)), 5)


def test_bad_model_and_k(studio):
    with pytest.raises(gr.Error, match="Unknown recommender"):
        handlers.recommend(studio, ["Toy Story (1995)"], "bert4rec", 5)
    with pytest.raises(gr.Error, match="between 1 and 50"):
        handlers.recommend(studio, ["Toy Story (1995)"], next(iter(studio.recommenders)), 0)


def test_load_test_user(studio):
    user = studio.dataset.test[0].user
    history, truth = handlers.load_test_user(studio, str(user))
    assert len(history) >= 3 and f"Test user {user}" in truth
    with pytest.raises(gr.Error, match="not a test user"):
        handlers.load_test_user(studio, "1")
    with pytest.raises(gr.Error, match="must be a number"):
        handlers.load_test_user(studio, "abc")


def test_served_app_over_http(studio):
    from gradio_client import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(studio)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        history, truth = client.predict(str(studio.dataset.test[0].user), api_name="/load_test_user")
        table, status = client.predict(history, next(iter(studio.recommenders)), 5, api_name="/recommend")
        assert len(table["data"]) == 5 and "given" in status
        with pytest.raises(Exception, match="Pick at least one"):
            client.predict([], next(iter(studio.recommenders)), 5, api_name="/recommend")
    finally:
        demo.close()
