"""The decode registry (llara/model/decoders.py): one entry per decode, read by the predictor, the evaluation and the app."""
from __future__ import annotations

from types import SimpleNamespace

from llara.model.decoders import DECODERS, DECODES, SCORED_DECODES, TITLE_DECODES, Reply, available, offered
from llara.serving.answers import UNTRAINED_TITLES


def _model(head: bool = False, next_head: bool = False, gate: bool = False) -> SimpleNamespace:
    """Just the parts ``offered_by`` reads: the candidate head and the next-item head with its residual gate."""
    return SimpleNamespace(head=object() if head else None,
                           next_head=SimpleNamespace(gate=object() if gate else None) if next_head else None)


def test_the_order_of_preference_and_the_derived_sets():
    assert DECODES == ("next", "residual", "head", "rank", "constrained", "generate")
    assert SCORED_DECODES == ("next", "residual", "head", "rank")
    assert TITLE_DECODES == ("rank", "constrained", "generate")
    assert "(rank, constrained, generate)" in UNTRAINED_TITLES
    assert [d for d in DECODES if DECODERS[d].batches] == ["next", "residual"]
    assert [d for d in DECODES if DECODERS[d].residual] == ["residual"]


def test_what_a_checkpoint_offers_follows_its_parts():
    assert offered(_model()) == ("rank", "constrained", "generate")
    assert offered(_model(head=True)) == ("head", "rank", "constrained", "generate")
    assert offered(_model(next_head=True)) == ("next", "rank", "constrained", "generate")
    assert offered(_model(next_head=True, gate=True))[:2] == ("next", "residual")
    assert not available(_model(), "residual") and available(_model(), "generate")
    for name, decoder in DECODERS.items():  # a decode some checkpoint lacks says which training flags give it
        assert bool(decoder.needs) == (not available(_model(), name))


def test_every_decode_is_labelled_for_the_demo():
    assert all(d.name in d.label for d in DECODERS.values())
    assert len({d.how for d in DECODERS.values()}) == len(DECODERS)


def test_a_reply_shows_the_generated_line_or_the_chosen_title():
    titles = ["Alpha", "Bravo"]
    assert Reply(1, [(1, 0.0), (0, -1.0)]).text(titles) == "Bravo"
    assert Reply(None, [], "something else").text(titles) == "something else"
    assert Reply(0, [], "I pick Alpha").text(titles) == "I pick Alpha"
