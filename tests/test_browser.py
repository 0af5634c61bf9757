"""End-to-end: the real app (committed checkpoint, 4-bit) served by ``app.py`` and driven by a real headless Chromium.

Covered, each through what the page shows:

* first visit: an example history with its 20 candidates is already there, and Predict answers at once;
* the decode radio opens on ``next`` (the LLM alone) and labels ``residual`` as the recommender plus the LLM's
  correction; "Compare prompt parts" fills a table with one row per prompt variant (full, each part removed, each
  part alone, nothing) and the text-only model, each answering with a candidate;
* picking a history by hand: the candidates are redrawn, Predict fills the three panels, Explain renders both
  prompts token by token;
* an example history (``gr.Examples``): clicking one puts exactly its movies in the history and draws 20 new
  candidates; Predict then fills the three panels;
* every decode mode: the text-only and hybrid panels answer with a candidate and say which decode answered; ranked
  modes chart all 20 candidates with the answer on top, ``constrained`` / ``generate`` chart one bar and say why
  (or, for ``generate``, show an answer that names no candidate as invalid, with no bar);
* Explain under every ablation: the status names the explained answers (those the panels showed), the hybrid
  per-movie chart is drawn for them, and under "drop titles" the text-only prompt is reported as not run;
* the per-movie chart lists the watched movies in watch order, numbered (its SVG axis labels, left to right);
* loading a real test user, the error toast of an empty history, and the Results tab's plot (the committed one, whole).

Needs Debian's chromium + chromium-driver (``make browser``). Skipped when they are missing, except with
``CHROMIUM_REQUIRED=1`` (set by ``make test``, hence in CI), where that is a failure. Screenshots go to
tests/screenshots/ (the README's screenshot is one of them, copied to assets/)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import RESULTS_PLOT
from app.state import DEFAULT_CHECKPOINT
from llara.checkpoint import read_json
from llara.evaluation.parts import variants
from tests import browser as b

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(__file__).resolve().parent / "screenshots"
PICKS = ["Toy Story (1995)", "Star Wars (1977)", "Fargo (1997)"]  # alphabetical order is the reverse of watch order
PANELS = ("text-panel", "hybrid-panel", "rec-panel")
EXAMPLES = "Example histories"  # the gr.Examples label
# how each decode's answer is described in its panel (app.handlers._headline), and the note of a one-bar chart
HOW = {"rank": "title likelihood", "head": "candidate head", "constrained": "constrained decoding",
       "generate": "greedy generation", "next": "next-item head (the LLM alone)",
       "residual": "recommender + the LLM's learned correction"}
ONE_BAR = "decoding names one movie and scores no other, so the chart has one bar"
DECODED = ("constrained", "generate")  # decodes that name one movie and score no other
# the rows of the part comparison for the demo's checkpoint: its parts (titles, item slots, a user token where it
# was trained with one), each removed and alone, then the text-only model
_USER = read_json(DEFAULT_CHECKPOINT / "meta.json")["config"].get("user_token", False)
PART_ROWS = [*variants(("titles", "items", "user") if _USER else ("titles", "items")), "text-only model"]
PREDICT_S, EXPLAIN_S = 180, 240  # generous: the CPU is shared, generate takes seconds, an explanation up to a minute


@pytest.fixture(scope="module")
def app_url():
    b.require_chromium()
    port = b.free_port()
    with b.serve(b.app_command(port), port, timeout=300, cwd=ROOT):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def page(app_url):
    with b.chromium() as driver:
        b.open_app(driver, app_url, "history")
        yield driver


# ---- steps shared by the tests -----------------------------------------------------------------------------

def predict(page) -> str:
    """Click Predict, wait until its answer is on the page (not the previous one) and return the status line."""
    with b.updated(page, "status", timeout=PREDICT_S):
        b.click(page, "predict")
    status = b.text(page, "status")
    assert "Predicted in" in status, status
    return status


def explain(page) -> str:
    """Click Explain (the default method), wait until the new explanation is shown and return its status line."""
    with b.updated(page, "attr-status", timeout=EXPLAIN_S):
        b.click(page, "attribute")
    return b.wait_text(page, "attr-status", "explaining", timeout=EXPLAIN_S)


def new_candidates(page, before: list[str]) -> list[str]:
    """Wait until the candidates are a new draw of 20 (they follow the history with no click); return them."""
    b.wait_text(page, "candidates", lambda _: len(b.dropdown_values(page, "candidates")) == 20
                and b.dropdown_values(page, "candidates") != before, timeout=60)
    return b.dropdown_values(page, "candidates")


def answer(page, panel: str, candidates: list[str]) -> str:
    """The movie a panel answered (the first line of its headline), checked to be one of the candidates."""
    head = b.text(page, f"{panel}-answer")
    movie = head.splitlines()[0].strip() if head.strip() else ""
    assert movie in candidates, (panel, head)
    return movie


def explained(status: str, prompt: str) -> str | None:
    """The movie the attribution status says it explains for ``prompt`` ("text" / "hybrid"); None if not listed."""
    found = re.search(rf"\b{prompt}: explaining (.+?) \((?:your choice|the model)", status)
    return found.group(1) if found else None


def numbered(movies: list[str]) -> list[str]:
    return [f"{k}. {movie}" for k, movie in enumerate(movies, start=1)]


# ---- tests ---------------------------------------------------------------------------------------------------

def test_first_visit_predicts_at_once(page):
    """The page opens on an example history with its 20 candidates: Predict answers without any other step."""
    assert len(b.dropdown_values(page, "history")) >= 2 and len(b.dropdown_values(page, "candidates")) == 20
    predict(page)
    b.screenshot(page, SHOTS / "first-visit.png")


def test_compare_prompt_parts(page):
    """The decode radio opens on the LLM alone; the part comparison answers every variant of the hybrid prompt and
    the text-only model with a candidate, and says how much each ranking changed versus the full prompt."""
    assert b.radio_value(page, "decode") == "next"
    labels = {value: label for label, value in b.radio_options(page, "decode")}
    assert labels["residual"] == "residual: the recommender plus the LLM's correction", labels
    candidates = b.dropdown_values(page, "candidates")
    with b.updated(page, "parts-table", timeout=PREDICT_S):
        b.click(page, "compare-parts")
    status = b.wait_text(page, "parts-status", "Compared", timeout=30)
    assert f"Compared {len(PART_ROWS)} prompts" in status and "the other way round" in status, status
    b.wait_text(page, "parts-table", lambda _: len(b.table_rows(page, "parts-table")) == len(PART_ROWS), timeout=30)
    rows = b.table_rows(page, "parts-table")
    assert [row[0] for row in rows] == PART_ROWS, rows
    for row in rows:
        assert row[2].removeprefix("★ ") in candidates, row
        assert row[4] == "reference" if row[0] == "full" else row[4].endswith("%"), row
    b.screenshot(page, SHOTS / "compare-parts.png")


def test_pick_predict_and_explain(page):
    first = b.dropdown_values(page, "candidates")
    b.clear_dropdown(page, "history")
    assert b.pick_dropdown(page, "history", PICKS) == PICKS
    candidates = new_candidates(page, first)
    assert "ablation: none" in predict(page)
    for panel in PANELS:
        answer(page, panel, candidates)
    b.screenshot(page, SHOTS / "predict.png")
    explain(page)
    view = b.text(page, "attr-view")
    # both prompts rendered token by token (one highlighted span each): the text-only one with <PH>, the hybrid with slots
    assert "Text-only prompt" in view and "<PH>" in view and "<HistoryEmb>" in view and "<CansEmb>" in view
    assert "Toy" in view and "Story" in view
    b.screenshot(page, SHOTS / "attribution.png")


def test_example_history_then_predict(page):
    """Clicking an example history (not the one the page opens on) replaces the history with exactly its movies and
    draws 20 new candidates; Predict then answers in all three panels."""
    shown = b.examples(page, EXAMPLES)
    assert len(shown) >= 2, shown
    before_history, before_candidates = b.dropdown_values(page, "history"), b.dropdown_values(page, "candidates")
    assert b.shows_example(shown[0], ", ".join(before_history))  # the first visit opens on the first example
    picked = b.pick_example(page, 1, EXAMPLES)
    b.wait_text(page, "history", lambda _: b.dropdown_values(page, "history") != before_history, timeout=30)
    history = b.dropdown_values(page, "history")
    assert b.shows_example(picked, ", ".join(history)), (history, picked)
    candidates = new_candidates(page, before_candidates)
    assert not set(candidates) & set(history), "a watched movie was drawn as a candidate"
    predict(page)
    for panel in PANELS:
        answer(page, panel, candidates)
    b.screenshot(page, SHOTS / "example-predict.png")


def test_every_decode_mode_answers(page):
    """Each decode of the radio, predicted on the first visit's history: the text-only and hybrid panels name a
    candidate and the decode that answered it (a model without the chosen decode says so); ranked decodes chart all
    20 candidates with the answer on top, constrained / generate chart the one movie they name and say why."""
    candidates = b.dropdown_values(page, "candidates")
    modes = [value for _, value in b.radio_options(page, "decode")]
    assert {"residual", *DECODED} <= set(modes), modes
    for mode in modes:
        b.pick_radio(page, "decode", mode)
        predict(page)
        for panel in ("text-panel", "hybrid-panel"):
            head, bars = b.text(page, f"{panel}-answer"), b.label_bars(page, f"{panel}-bars")
            if mode == "generate" and head.startswith("Invalid answer:"):  # free generation may name no candidate
                assert "names none of the candidates" in head and bars == [], (panel, head, bars)
                continue
            movie = answer(page, panel, candidates)
            how = head.splitlines()[1]
            assert how.startswith(HOW[mode]) or f"has no {mode} decode" in how, (mode, panel, head)
            if mode in DECODED:
                assert ONE_BAR in head and bars == [(movie, 1.0)], (mode, panel, head, bars)
            else:
                assert sorted(label for label, _ in bars) == sorted(candidates), (mode, panel, bars)
                assert bars[0][0] == movie, (mode, panel, head, bars[:3])
        if mode in DECODED:
            b.screenshot(page, SHOTS / f"decode-{mode}.png")


def test_explain_under_every_ablation(page):
    """Each ablation of the radio: Predict, then Explain (default method). The status names the answers the panels
    showed; the hybrid chart is drawn for that answer with one labelled group per watched movie. Under "drop titles"
    the text-only prompt is not run: no text answer, no text explanation, no text chart."""
    history = b.dropdown_values(page, "history")
    for label, ablation in b.radio_options(page, "ablation"):
        b.pick_radio(page, "ablation", label)
        candidates = b.dropdown_values(page, "candidates")
        assert f"ablation: {ablation}" in predict(page)
        hybrid = answer(page, "hybrid-panel", candidates)
        status = explain(page)
        assert explained(status, "hybrid") == hybrid, (ablation, status)
        chart = b.wait_chart(page, "hybrid-item-bars")
        shuffled = " (prompt in shuffled order)" if ablation == "shuffle" else ""
        assert chart["title"] == f"hybrid: why {hybrid}{shuffled}", (ablation, chart)
        assert chart["bars"] >= len(history), (ablation, chart)
        # watch order under every ablation, the shuffled prompt included (its title says the prompt was shuffled)
        assert chart["x"] == numbered(history), (ablation, chart)
        if ablation == "no-titles":
            assert "Not run" in b.text(page, "text-panel-answer")
            assert explained(status, "text") is None and "text:" not in status, status
            assert "(no text-only prompt for this ablation)" in b.text(page, "text-attr")
            assert b.bar_chart(page, "text-item-bars") is None
            assert "not run" in b.text(page, "text-item-bars"), b.text(page, "text-item-bars")  # the label says why
        else:
            text = answer(page, "text-panel", candidates)
            assert explained(status, "text") == text, (ablation, status)
            text_chart = b.wait_chart(page, "text-item-bars")
            assert text_chart["title"] == f"text: why {text}{shuffled}", (ablation, text_chart)
            assert "not run" not in b.text(page, "text-item-bars")
        b.screenshot(page, SHOTS / f"explain-ablation-{ablation}.png")


def test_item_chart_lists_movies_in_watch_order(page):
    """The per-movie charts (gr.BarPlot, drawn as SVG) label their bars "1. <first watched>", "2. ...", ... from
    left to right: watch order, which for PICKS is the reverse of the alphabetical order a plain sort would give."""
    first = b.dropdown_values(page, "candidates")
    b.clear_dropdown(page, "history")
    assert b.pick_dropdown(page, "history", PICKS) == PICKS
    new_candidates(page, first)
    predict(page)
    explain(page)
    for chart_id in ("hybrid-item-bars", "text-item-bars"):
        chart = b.wait_chart(page, chart_id)
        assert chart["x"] == numbered(PICKS), (chart_id, chart)
        assert chart["legend"] == [] and chart["clipped"] == [], chart  # deletion: one part per movie, one colour
    b.screenshot(page, SHOTS / "chart-order.png")
    # title / embedding removal splits each movie in two colours, which the label names (no clipped legend)
    b.pick_radio(page, "attr-method", "item: remove title / embedding (slow)")
    explain(page)
    chart = b.wait_chart(page, "hybrid-item-bars")
    b.screenshot(page, SHOTS / "chart-parts.png")
    assert chart["x"] == numbered(PICKS) and chart["clipped"] == [], chart
    assert chart["legend"] == [] and "(orange: title, blue: embedding)" in b.text(page, "hybrid-item-bars")
    b.pick_radio(page, "attr-method", "item: delete the movie, rebuild the prompt")  # the default, for later tests


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
    from PIL import Image
    from selenium.webdriver.common.by import By

    tab = next(t for t in page.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == "Results")
    tab.click()
    img = b.element(page, "results-plot", timeout=30).find_element(By.TAG_NAME, "img")
    # the loaded image's size: a broken or placeholder image never matches the committed plot's
    size = b._wait(page, 30).until(lambda d: d.execute_script(
        "const i = arguments[0]; return i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]", img),
        "the results plot does not load")
    b.screenshot(page, SHOTS / "results-tab.png")
    assert tab.get_attribute("aria-selected") == "true"
    with Image.open(RESULTS_PLOT) as plot:
        assert tuple(size) == plot.size  # the training curves as committed, whole
