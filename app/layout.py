"""The page's components, and what each shows for a loaded dataset (the same function fills the page at start-up
and when the dataset switch changes it, so the two never disagree)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

import app.charts as charts
import app.handlers as handlers
import app.wording as wording
from llara.constants import REPO_ROOT
from llara.evaluation.parts import model_parts
from llara.model.decoders import DECODERS
from llara.serving.answers import ABLATIONS, ATTRIBUTION_METHODS, UNTRAINED_TITLES, writes_titles
from llara.serving.part_view import NEEDS_NEXT_HEAD, PART_COLUMNS

from .state import Studio, Studios

TITLE = "LLaRA-Studio"
PARTS_INTRO = (
    "What each part of the hybrid prompt does to the answer, for the history and candidates above: the full prompt "
    "(titles, item slots{user}), each part removed, each part alone and nothing, all answered by the LLM alone "
    "(next-item head) in one batched pass, beside the text-only model."
)
# the most faithful method on the deletion benchmark, and the fastest (README, *Are they faithful?*)
DEFAULT_METHOD = "deletion"
EXAMPLES_LABEL = "Example histories"
RESULTS_DOC = REPO_ROOT / "docs" / "results.md"
RESULTS_PLOT = REPO_ROOT / "assets" / "training_curves.png"
RECOMMENDERS = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser"}


def catalog_schema(dropdown: gr.Dropdown) -> gr.Dropdown:
    """Make the API schema of a multiselect of catalog labels say "a list of catalog labels" instead of listing all
    1,682 (which made the API description half a megabyte); the handlers check every label and name a wrong one.
    (An instance attribute, not a subclass: gradio writes a stub file beside every module that subclasses one.)"""
    dropdown.api_info = lambda: {"type": "array", "items": {"type": "string"},
                                 "description": "labels exactly as the catalog writes them, e.g. 'Toy Story (1995)' "
                                                "or 'Radiohead'"}
    return dropdown


def seed_input(number: gr.Number) -> gr.Number:
    """Let a seed that is not a number at all ("abc", true, [1]) reach the handlers, whose check names the problem in a
    sentence; gradio's own bound check would fail on it with its generic error. Numbers keep gradio's checks."""
    checked = number.preprocess
    number.preprocess = lambda payload: checked(payload) if payload is None or (
        isinstance(payload, (int, float)) and not isinstance(payload, bool)) else payload
    return number


def _panel(title: str, elem_id: str) -> tuple[gr.Markdown, gr.Label]:
    with gr.Column(elem_id=elem_id):
        gr.Markdown(f"#### {title}")
        head = gr.Markdown("*press Predict*", elem_id=f"{elem_id}-answer")
        bars = gr.Label(num_top_classes=20, show_label=False, elem_id=f"{elem_id}-bars")
    return head, bars


def header(studio: Studio) -> str:
    recommender = RECOMMENDERS.get(studio.predictor.meta.get("recommender", {}).get("model", ""),
                                   "sequential recommender")
    return (f"# {TITLE}\n{wording.intro(studio.words, recommender)}\n\n<sub>Model: "
            f"`{Path(studio.checkpoint).name or 'in memory'}` at {studio.precision or 'default'} precision, loaded in "
            f"{studio.load_seconds:.1f} s.</sub>")


def _choices(labels: dict[str, str], keys) -> list[tuple[str, str]]:
    return [(labels[k], k) for k in keys]


def props(studio: Studio) -> dict[str, dict]:
    """The properties of every component whose content depends on the dataset, as the page opens on ``studio``:
    its catalog, wording, models and example history with its candidates; what a previous dataset showed is
    cleared. Keyed by the component's name in the layout; the layout builds with them, the switch updates with them."""
    w, decodes = studio.words, list(studio.predictor.decodes)
    examples = studio.examples
    first = examples[0] if examples else []
    untrained = "" if writes_titles(studio.predictor.model) else f" ({UNTRAINED_TITLES})"
    user_part = ", user token" if "user" in model_parts(studio.predictor.model) else ""
    needs = "" if "next" in decodes else f"\n\n**{NEEDS_NEXT_HEAD}**"
    out: dict[str, dict] = {
        "header": {"value": header(studio)},
        "history": {"choices": studio.labels, "value": first, "label": wording.history_label(w)},
        "query": {"value": "", "label": w.search_label, "placeholder": w.search_placeholder},
        "found": {"choices": [], "value": []},
        # drawn as text: an example drawn by the history dropdown shows only labels among the first dataset's choices
        # (empty buttons after a switch); long ones are cut with "..."; a click is answered by index
        "examples": {"samples": [[", ".join(ex)] for ex in examples], "visible": bool(examples)},
        "candidates": {"choices": studio.labels, "label": wording.candidates_label(w),
                       "value": handlers.draw_candidates(studio, first, 0) if first else []},
        "decode": {"choices": [(DECODERS[d].label, d) for d in decodes], "value": decodes[0],
                   "info": "next (the default): the LLM's next-item head alone · residual: the recommender plus the "
                           "LLM's correction (recommender score + the LLM's learned, gated next-item score) · head: "
                           f"candidate head · rank: title likelihood · constrained / generate: decoding{untrained}"},
        "ablation": {"choices": _choices(wording.ablation_labels(w), ABLATIONS)},
        "parts_intro": {"value": PARTS_INTRO.format(user=user_part) + needs},
        "parts_table": {"value": pd.DataFrame(columns=PART_COLUMNS)},
        "attributions": {"label": wording.attributions_title(w)},
        "target": {"choices": [handlers.TOP_CHOICE], "value": handlers.TOP_CHOICE},
        "method": {"choices": _choices(wording.method_labels(w), ATTRIBUTION_METHODS)},
        "legend": {"value": wording.attribution_legend(w)},
        "text_bars_attr": {"value": None, "label": charts.chart_label("text", w)},
        "hybrid_bars_attr": {"value": None, "label": charts.chart_label("hybrid", w)},
    }
    for name in ("user", "truth", "status", "parts_status", "attr_status"):
        out[name] = {"value": ""}
    for name in ("text_head", "hybrid_head", "rec_head"):
        out[name] = {"value": "*press Predict*"}
    for name in ("text_bars", "hybrid_bars", "rec_bars", "text_prompt", "hybrid_prompt", "slots", "text_attr",
                 "hybrid_attr"):
        out[name] = {"value": None}
    return out


def page(ui: SimpleNamespace, studio: Studio) -> dict:
    """``props(studio)`` as updates of ``ui``'s components (an event's outputs), the request state reset."""
    updates: dict = {ui.request: None}
    for name, kwargs in props(studio).items():
        component = getattr(ui, name)
        updates[component] = type(component)(**kwargs)  # outside a Blocks context: an update, not a new component
    return updates


def dataset_switch(studios: Studios) -> tuple[gr.Radio | None, gr.Markdown | None]:
    """The dataset radio at the top of the page, and a note naming the datasets that cannot be served here and how
    to get them; (None, None) where the server offers one dataset."""
    if not studios.switchable:
        return None, None
    offers = studios.offers.values()
    choices = [(o.label if o.reason is None else f"{o.label}: unavailable here", o.name) for o in offers]
    note = "\n\n".join(f"*Not available here:* {o.reason}" for o in offers if o.reason)
    radio = gr.Radio(choices, value=studios.default, label="Dataset", elem_id="dataset",
                     info="The catalog, the search, the examples, the test users and all three models follow it.")
    return radio, gr.Markdown(note, elem_id="dataset-note")


def layout(studio: Studio, studios: Studios) -> SimpleNamespace:
    """The page's components (as ``build_demo`` wires them), filled for ``studio``."""
    ui, p = SimpleNamespace(), props(studio)
    ui.header = gr.Markdown(elem_id="header", **p["header"])
    ui.choice, ui.note = dataset_switch(studios)
    with gr.Tab("Recommend"):
        with gr.Row():
            with gr.Column(scale=3):
                ui.history = catalog_schema(gr.Dropdown(multiselect=True, elem_id="history", allow_custom_value=True,
                                                            **p["history"]))
                with gr.Row():
                    ui.user = gr.Textbox(label="Test user id (empty = random)", max_lines=1, max_length=12,
                                         elem_id="user-id", scale=1)
                    ui.load_user = gr.Button("Load a real test user", elem_id="load-user", scale=1)
                with gr.Row():
                    ui.query = gr.Textbox(max_lines=1, max_length=500, elem_id="describe", scale=3, **p["query"])
                    ui.find = gr.Button("Search", elem_id="search", scale=1)
                with gr.Row():
                    ui.found = gr.Dropdown(choices=[], multiselect=True, label="Matches (pick, then add)",
                                           allow_custom_value=True, elem_id="found", scale=3)
                    ui.add = gr.Button("Add to history", elem_id="add-found", scale=1)
                ui.truth = gr.Markdown(elem_id="truth")
                # a plain gr.Dataset (what gr.Examples draws): its samples change with the dataset, and a click is
                # answered from the session's dataset (gr.Examples keeps the samples it was built with)
                ui.example_text = gr.Markdown(visible=False)  # how the examples are drawn: as text (see props)
                ui.examples = gr.Dataset(components=[ui.example_text], label=EXAMPLES_LABEL, type="index",
                                         elem_id="examples", **p["examples"])
            with gr.Column(scale=2):
                ui.candidates = catalog_schema(gr.Dropdown(multiselect=True, elem_id="candidates",
                                                           allow_custom_value=True, **p["candidates"]))
                with gr.Row():
                    ui.seed = seed_input(gr.Number(value=0, minimum=0, label="Candidate / shuffle seed (a whole number)",
                                                   elem_id="seed", scale=2))
                    ui.redraw = gr.Button("Draw candidates", elem_id="redraw", scale=1)
                ui.cand_kind = gr.Radio([("random: the paper's draw", "random"),
                                         ("hard: half from the recommender's 30 best for this history", "hard")],
                                        value="random", label="Candidate set", elem_id="candidate-kind")
                ui.decode = gr.Radio(label="Decode", elem_id="decode", **p["decode"])
                ui.ablation = gr.Radio(value="none", label="Ablation", elem_id="ablation", **p["ablation"])
                ui.predict = gr.Button("Predict", variant="primary", elem_id="predict")
        ui.status = gr.Markdown(elem_id="status")
        with gr.Row():
            ui.text_head, ui.text_bars = _panel("Text-only LLaRA", "text-panel")
            ui.hybrid_head, ui.hybrid_bars = _panel("Hybrid LLaRA", "hybrid-panel")
            ui.rec_head, ui.rec_bars = _panel("Recommender alone", "rec-panel")
        with gr.Accordion("Compare prompt parts", open=True, elem_id="parts"):
            ui.parts_intro = gr.Markdown(elem_id="parts-intro", **p["parts_intro"])
            ui.compare = gr.Button("Compare prompt parts", elem_id="compare-parts")
            ui.parts_status = gr.Markdown(elem_id="parts-status")
            ui.parts_table = gr.Dataframe(label="One row per prompt", elem_id="parts-table", wrap=True,
                                          interactive=False, max_height=1200,
                                          column_widths=["11%", "17%", "15%", "45%", "12%"])
        with gr.Accordion("Prompt inspector", open=False, elem_id="inspector"):
            with gr.Row():
                ui.text_prompt = gr.HighlightedText(label="Text-only prompt", elem_id="text-prompt")
                ui.hybrid_prompt = gr.HighlightedText(label="Hybrid prompt (embedding slots highlighted)",
                                                      elem_id="hybrid-prompt")
            ui.slots = gr.Dataframe(label="Embedding slots of the hybrid prompt", elem_id="slots", wrap=True)
        with gr.Accordion(open=True, elem_id="attributions", **p["attributions"]) as ui.attributions:
            with gr.Row():
                ui.target = gr.Dropdown(choices=[handlers.TOP_CHOICE], value=handlers.TOP_CHOICE,
                                        allow_custom_value=True, label="Candidate to explain", elem_id="attr-target",
                                        scale=2)
                ui.method = gr.Radio(value=DEFAULT_METHOD, label="Method", elem_id="attr-method", scale=2,
                                     **p["method"])
                ui.explain = gr.Button("Explain", elem_id="attribute", scale=1)
            ui.attr_status = gr.Markdown(elem_id="attr-status")
            with gr.Row(elem_id="attr-view"):
                ui.text_attr = gr.HighlightedText(label="Text-only prompt", elem_id="text-attr")
                ui.hybrid_attr = gr.HighlightedText(label="Hybrid prompt", elem_id="hybrid-attr")
            ui.legend = gr.Markdown(elem_id="attr-legend", **p["legend"])
            with gr.Row():  # one chart per prompt: the two prompts may explain different answers
                # tall enough for the angled item labels (the colours of split bars are named in the label)
                ui.text_bars_attr = gr.BarPlot(elem_id="text-item-bars", height=420, **p["text_bars_attr"])
                ui.hybrid_bars_attr = gr.BarPlot(elem_id="hybrid-item-bars", height=420, **p["hybrid_bars_attr"])
    with gr.Tab("Results", elem_id="results-tab"):
        gr.Markdown(RESULTS_DOC.read_text() if RESULTS_DOC.is_file() else "No results document yet (docs/results.md).")
        if RESULTS_PLOT.is_file():
            from PIL import Image

            # the pixels, not the path: gradio then serves its own copy, whatever folder the app started from
            gr.Image(Image.open(RESULTS_PLOT).convert("RGB"), label="Training curves", show_label=True,
                     elem_id="results-plot", interactive=False, format="png")
    # Per-session state (gradio keeps it on the server, one per browser tab or API client, out of the HTTP API's
    # parameters): the dataset on screen, and the request state (the loaded user's true item, the last answers).
    ui.dataset = gr.State(studios.default)
    ui.request = gr.State(None)
    return ui
