"""End-to-end: the real app (committed checkpoint, 4-bit) served by ``app.py`` and driven by a real headless Chromium.

Needs Debian's chromium + chromium-driver (``make browser``). Skipped when they are missing, except with
``CHROMIUM_REQUIRED=1`` (set by ``make test``, hence in CI), where that is a failure. Screenshots go to
tests/screenshots/ (the README's screenshot is one of them, copied to assets/)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import browser as b

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(__file__).resolve().parent / "screenshots"
PICKS = ["Toy Story (1995)", "Star Wars (1977)", "Fargo (1997)"]


@pytest.fixture(scope="module")
def app_url():
    why = b.missing()
    if why:
        if os.environ.get("CHROMIUM_REQUIRED") == "1":
            pytest.fail(f"CHROMIUM_REQUIRED=1 but {why}")
        pytest.skip(why)
    port = b.free_port()
    with b.serve(b.app_command(port), port, timeout=300, cwd=ROOT):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def page(app_url):
    with b.chromium() as driver:
        b.open_app(driver, app_url, "history")
        yield driver


def test_first_visit_predicts_at_once(page):
    """The page opens on an example history with its 20 candidates: Predict answers without any other step."""
    assert len(b.dropdown_values(page, "history")) >= 2 and len(b.dropdown_values(page, "candidates")) == 20
    b.click(page, "predict")
    assert "Predicted in" in b.wait_text(page, "status", "Predicted in", timeout=120)
    b.screenshot(page, SHOTS / "first-visit.png")


def test_pick_predict_and_explain(page):
    first = b.dropdown_values(page, "candidates")
    b.clear_dropdown(page, "history")
    assert b.pick_dropdown(page, "history", PICKS) == PICKS
    # the candidates follow the history: a new draw of 20, with no click
    b.wait_text(page, "candidates", lambda _: len(b.dropdown_values(page, "candidates")) == 20
                and b.dropdown_values(page, "candidates") != first, timeout=60)
    b.click(page, "predict")
    status = b.wait_text(page, "status", "Predicted in", timeout=120)
    assert "ablation: none" in status
    for panel in ("text-panel", "hybrid-panel", "rec-panel"):
        answer = b.text(page, f"{panel}-answer")
        assert answer.strip() and "press Predict" not in answer, (panel, answer)
        assert any(label in answer for label in b.dropdown_values(page, "candidates")), (panel, answer)
    b.screenshot(page, SHOTS / "predict.png")
    b.click(page, "attribute")
    b.wait_text(page, "attr-status", "explaining", timeout=180)
    view = b.text(page, "attr-view")
    # both prompts rendered token by token (one highlighted span each): the text-only one with <PH>, the hybrid with slots
    assert "Text-only prompt" in view and "<PH>" in view and "<HistoryEmb>" in view and "<CansEmb>" in view
    assert "Toy" in view and "Story" in view
    b.screenshot(page, SHOTS / "attribution.png")


def test_load_a_real_test_user(page):
    b.click(page, "load-user")
    truth = b.wait_text(page, "truth", "true next movie", timeout=60)
    assert "Test user" in truth
    assert len(b.dropdown_values(page, "history")) >= 3
    assert len(b.dropdown_values(page, "candidates")) == 20


def test_empty_history_shows_error_toast(page):
    b.clear_dropdown(page, "history")
    b.click(page, "predict")
    message = b.toast_text(page, timeout=30)
    b.screenshot(page, SHOTS / "empty-history-error.png")
    assert "Pick at least one" in message


def test_results_tab_shows_its_plot(page):
    from selenium.webdriver.common.by import By

    tab = next(t for t in page.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == "Results")
    tab.click()
    img = b.element(page, "results-plot", timeout=30).find_element(By.TAG_NAME, "img")
    b._wait(page, 30).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
                            "the results plot does not load")
    b.screenshot(page, SHOTS / "results-tab.png")
