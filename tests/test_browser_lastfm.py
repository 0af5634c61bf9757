"""End-to-end: the dataset switch in a real headless Chromium, on the committed LastFM models and the shared LastFM
data (``../shared/datasets/lastfm``, given to the app as ``$LLARA_LASTFM_DIR``).

The page opens on MovieLens; switching to LastFM changes the catalog, the wording and the example histories
(artists), and Predict answers with LastFM artists in all three panels. Skipped with a reason where the LastFM
checkpoints, the shared data or Chromium are missing (``make browser``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from llara.constants import LASTFM_CHECKPOINT, LASTFM_TEXT_CHECKPOINT
from llara.serving.demo_datasets import DEMO_DATASETS
from tests import browser as b

from .conftest import SHARED_LASTFM

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(__file__).resolve().parent / "screenshots"
PANELS = ("text-panel", "hybrid-panel", "rec-panel")
SWITCH_S, PREDICT_S = 600, 180  # the first switch also merges the LastFM adapters once, on a shared CPU


@pytest.fixture(scope="module")
def app_url():
    missing = [str(f) for f in (LASTFM_CHECKPOINT, LASTFM_TEXT_CHECKPOINT) if not (f / "meta.json").is_file()]
    if missing:
        pytest.skip(f"the LastFM checkpoints are not here: {', '.join(missing)}")
    if not SHARED_LASTFM.is_dir():
        pytest.skip(f"the shared LastFM data is not available ({SHARED_LASTFM})")
    b.require_chromium()
    port = b.free_port()
    with b.serve([*b.app_command(port), "--datasets", "movielens,lastfm"], port, timeout=900, cwd=ROOT,
                 env={"LLARA_LASTFM_DIR": str(SHARED_LASTFM)}):
        yield f"http://127.0.0.1:{port}/"


def test_switch_to_lastfm_and_predict_with_an_artist_history(app_url):
    with b.chromium() as page:
        b.open_app(page, app_url, "history", timeout=300)
        assert b.radio_value(page, "dataset") == "movielens"
        movies = b.dropdown_values(page, "history")
        b.pick_radio(page, "dataset", "LastFM (artists)")
        # the page opens LastFM on its first example history (artists) with 20 artist candidates
        first = list(DEMO_DATASETS["lastfm"].examples[0])
        b.wait_text(page, "history", lambda _: b.dropdown_values(page, "history") == first, timeout=SWITCH_S)
        assert movies != first
        b.wait_text(page, "candidates", lambda _: len(b.dropdown_values(page, "candidates")) == 20, timeout=60)
        assert "Artists listened to" in b.text(page, "history")
        assert "Find artists by name" in b.text(page, "describe")
        shown = b.examples(page, "Example histories")
        assert shown[1] == ", ".join(DEMO_DATASETS["lastfm"].examples[1]), shown
        # another artist history, picked from the examples: its candidates are redrawn, then Predict answers
        before = b.dropdown_values(page, "candidates")
        b.pick_example(page, 1, "Example histories")
        b.wait_text(page, "history", lambda _: b.dropdown_values(page, "history")
                    == list(DEMO_DATASETS["lastfm"].examples[1]), timeout=60)
        b.wait_text(page, "candidates", lambda _: len(b.dropdown_values(page, "candidates")) == 20
                    and b.dropdown_values(page, "candidates") != before, timeout=60)
        candidates = b.dropdown_values(page, "candidates")
        with b.updated(page, "status", timeout=PREDICT_S):
            b.click(page, "predict")
        assert "Predicted in" in b.text(page, "status")
        for panel in PANELS:
            head = b.text(page, f"{panel}-answer")
            assert head.splitlines()[0].strip() in candidates, (panel, head)
        assert "lastfm" in b.text(page, "header")  # the model line names the LastFM checkpoint
        b.screenshot(page, SHOTS / "lastfm-predict.png")
