"""The committed LLaRA checkpoint behind the demo: it loads at 4-bit, answers a fixed prompt with a valid
candidate, and the served app drives it end to end over HTTP (load a user, predict both ways, attribute)."""
from __future__ import annotations

import pytest

from app.state import DEFAULT_CHECKPOINT

from .conftest import served_client

pytestmark = pytest.mark.integration
HISTORY = ["Toy Story", "Star Wars", "Fargo", "Scream", "Liar Liar"]


@pytest.fixture(scope="module")
def studio(real_llm_cache):
    from app.state import Studio

    return Studio.load(DEFAULT_CHECKPOINT, precision="nf4")


def test_committed_checkpoint_answers_a_fixed_prompt(studio):
    p = studio.predictor
    history = [p.catalog.find(t) for t in HISTORY]
    cands = p.draw_candidates(history, seed=0)
    assert p.meta["config"]["mode"] == "curriculum" and p.model.head is not None
    for decode in ("head", "rank", "constrained"):
        result = p.predict(history, cands, decode)
        for name in ("text", "hybrid", "recommender"):
            assert result.answers[name].item in cands, (decode, name, result.answers[name])
    generated = p.predict(history, cands, "generate").answers["hybrid"]
    assert generated.text.strip()  # validity of free generation is measured (ValidRatio), not asserted per prompt


def test_served_app_end_to_end(studio):
    from app import handlers

    with served_client(studio) as client:
        history, cands, truth = client.predict(str(studio.dataset.test[0].user), 0, api_name="/load_test_user")
        assert len(cands) == 20 and "true next movie" in truth
        out = client.predict(history, cands, "head", "none", 0, truth, api_name="/predict")
        assert out[0].startswith("###") and out[2].startswith("###") and "Predicted in" in out[6]
        assert len(out[3]["confidences"]) == 20  # the hybrid ranking over all 20 candidates
        *_, status = client.predict(history, cands, handlers.TOP_CHOICE, "grad_x_input", "none", 0, "head",
                                    api_name="/attribute")
        assert status.count("explaining") == 2
        with pytest.raises(Exception, match="candidate set is empty"):
            client.predict(history, [], "head", "none", 0, truth, api_name="/predict")
