"""End-to-end: the real app served by ``app.py``, driven by a real headless Chromium (helpers in tests/browser.py).

Needs Debian's chromium + chromium-driver (``make browser``). Skipped when they are missing, except with
``CHROMIUM_REQUIRED=1`` (set by ``make test``, hence in CI), where that is a failure."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from llara.recommenders import RECOMMENDERS
from tests import browser as b

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(__file__).resolve().parent / "screenshots"


@pytest.fixture(scope="module")
def app_url():
    why = b.missing()
    if why:
        if os.environ.get("CHROMIUM_REQUIRED") == "1":
            pytest.fail(f"CHROMIUM_REQUIRED=1 but {why}")
        pytest.skip(why)
    port = b.free_port()
    with b.serve(b.app_command(port), port, timeout=180, cwd=ROOT):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def page(app_url):
    with b.chromium() as driver:
        b.open_app(driver, app_url, "history")
        yield driver


def test_pick_movies_and_recommend(page):
    assert b.pick_dropdown(page, "history", ["Toy Story (1995)", "Star Wars (1977)"]) == [
        "Toy Story (1995)", "Star Wars (1977)"]
    b.click(page, "predict")
    status = b.wait_text(page, "status", "given 2 watched", timeout=60)
    b.screenshot(page, SHOTS / "recommend.png")
    assert status.split()[0] in RECOMMENDERS, status  # "<recommender> over all 1,682 movies, given 2 watched."
    rows = b.table_rows(page, "predictions")
    assert len(rows) >= 5 and rows[0][0] == "1" and rows[0][1], rows
    assert not {"Toy Story (1995)", "Star Wars (1977)"} & {row[1] for row in rows}  # watched items are not re-recommended


def test_empty_history_shows_error_toast(page):
    b.click(page, "predict")
    message = b.toast_text(page, timeout=30)
    b.screenshot(page, SHOTS / "empty-history-error.png")
    assert "Pick at least one" in message
