"""The LLaRA-Studio Gradio UI: layout and wiring only (decisions live in app.handlers and the llara library)."""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from llara.answers import ABLATIONS, ATTRIBUTION_METHODS, UNTRAINED_TITLES, writes_titles
from llara.checkpoint import REPO_ROOT
from llara.decoders import DECODERS
from llara.part_view import NEEDS_NEXT_HEAD
from llara.parts import model_parts

from . import handlers
from .gpu import on_gpu  # ZeroGPU: the handlers that run the model get a GPU
from .state import Studio

TITLE = "LLaRA-Studio"
INTRO = (
    "Pick the movies a user watched, in order. LLaRA lists each movie in its prompt by title **and** by a "
    "behavioural token: the movie's embedding from a trained {recommender}, projected into the language model. Compare the "
    "text-only prompt, the hybrid prompt and the recommender alone, inspect the prompt and see which watched movies "
    "drove the answer."
)
ABLATION_LABELS = {
    "none": "none",
    "no-embeddings": "drop item embeddings (every slot gets the average item)",
    "no-titles": "drop titles (IDs only: slots alone)",
    "shuffle": "shuffle the watch order (seeded)",
}
METHOD_LABELS = {"grad_x_input": "token: gradient × input", "ig": "token: integrated gradients",
                 "ablation": "item: remove title / embedding (slow)",
                 "deletion": "item: delete the movie, rebuild the prompt"}
PARTS_INTRO = (
    "What each part of the hybrid prompt does to the answer, for the history and candidates above: the full prompt "
    "(titles, item slots{user}), each part removed, each part alone and nothing, all answered by the LLM alone "
    "(next-item head) in one batched pass, beside the text-only model."
)
# the most faithful method on the deletion benchmark, and the fastest (README, *Are they faithful?*)
DEFAULT_METHOD = "deletion"
EXAMPLES = [
    ["Toy Story (1995)", "Aladdin (1992)", "The Lion King (1994)", "Beauty and the Beast (1991)"],
    ["Star Wars (1977)", "The Empire Strikes Back (1980)", "Raiders of the Lost Ark (1981)", "Alien (1979)"],
    ["Pulp Fiction (1994)", "Reservoir Dogs (1992)", "Fargo (1997)", "The Usual Suspects (1995)"],
]
RESULTS_DOC = REPO_ROOT / "docs" / "results.md"
RESULTS_PLOT = REPO_ROOT / "assets" / "training_curves.png"


def catalog_schema(dropdown: gr.Dropdown) -> gr.Dropdown:
    """Make the API schema of a multiselect of catalog labels say "a list of movie labels" instead of listing all
    1,682 (which made the API description half a megabyte); the handlers check every label and name a wrong one.
    (An instance attribute, not a subclass: gradio writes a stub file beside every module that subclasses one.)"""
    dropdown.api_info = lambda: {"type": "array", "items": {"type": "string"},
                                 "description": "movie labels exactly as the catalog writes them, e.g. 'Toy Story (1995)'"}
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


def build_demo(studio: Studio) -> gr.Blocks:
    """The Blocks app for an already loaded ``studio``.

    Dropdowns allow custom values on purpose: gradio's own check would answer an unknown title over the HTTP API
    with the whole catalog (40 KB) and echo the input; our handlers answer with one sentence instead."""
    call = functools.partial
    decodes = list(studio.predictor.decodes)
    examples = [[m for m in ex if m in studio.by_label] for ex in EXAMPLES]
    examples = [ex for ex in examples if len(ex) >= 2]
    # the first visit opens on an example history and its candidates: Predict works before anything is picked
    first = examples[0] if examples else []
    first_candidates = handlers.draw_candidates(studio, first, 0) if first else []
    with gr.Blocks(title=TITLE) as demo:
        recommender = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser"}.get(
            studio.predictor.meta.get("recommender", {}).get("model", ""), "sequential recommender")
        gr.Markdown(f"# {TITLE}\n{INTRO.format(recommender=recommender)}\n\n<sub>Model: `{Path(studio.checkpoint).name or 'in memory'}` at "
                    f"{studio.precision or 'default'} precision, loaded in {studio.load_seconds:.1f} s.</sub>")
        with gr.Tab("Recommend"):
            with gr.Row():
                with gr.Column(scale=3):
                    history = gr.Dropdown(choices=studio.labels, multiselect=True, elem_id="history", allow_custom_value=True,
                                          value=first, label="Watched movies, oldest first (up to 10: more keeps the 10 "
                                                             "most recent)")
                    catalog_schema(history)
                    with gr.Row():
                        user = gr.Textbox(label="Test user id (empty = random)", max_lines=1, max_length=12,
                                          elem_id="user-id", scale=1)
                        load_user = gr.Button("Load a real test user", elem_id="load-user", scale=1)
                    with gr.Row():
                        query = gr.Textbox(label="Find movies by description (title, year and genre words)", max_lines=1, max_length=500,
                                           placeholder="e.g. a 1990s crime thriller (searches titles, years and genres)",
                                           elem_id="describe", scale=3)
                        find = gr.Button("Search", elem_id="search", scale=1)
                    with gr.Row():
                        found = gr.Dropdown(choices=[], multiselect=True, label="Matches (pick, then add)", allow_custom_value=True,
                                            elem_id="found", scale=3)
                        add = gr.Button("Add to history", elem_id="add-found", scale=1)
                    truth = gr.Markdown(elem_id="truth")
                    if examples:
                        gr.Examples(examples=[[ex] for ex in examples], inputs=[history], label="Example histories",
                                    elem_id="examples")
                with gr.Column(scale=2):
                    candidates = gr.Dropdown(choices=studio.labels, multiselect=True, elem_id="candidates", allow_custom_value=True,
                                             value=first_candidates,
                                             label="Candidates: 20 unwatched movies drawn at random with the seed "
                                                   "(redrawn when the history changes; editable)")
                    catalog_schema(candidates)
                    with gr.Row():
                        seed = seed_input(gr.Number(value=0, minimum=0, label="Candidate / shuffle seed (a whole number)",
                                                    elem_id="seed", scale=2))
                        redraw = gr.Button("Draw candidates", elem_id="redraw", scale=1)
                    cand_kind = gr.Radio([("random: the paper's draw", "random"),
                                          ("hard: half from the recommender's 30 best for this history", "hard")],
                                         value="random", label="Candidate set", elem_id="candidate-kind")
                    untrained = "" if writes_titles(studio.predictor.model) else f" ({UNTRAINED_TITLES})"
                    decode = gr.Radio([(DECODERS[d].label, d) for d in decodes], value=decodes[0],
                                      label="Decode",
                                      info="next (the default): the LLM's next-item head alone · residual: the "
                                           "recommender plus the LLM's correction (recommender score + the LLM's "
                                           "learned, gated next-item score) · head: candidate head · rank: title "
                                           f"likelihood · constrained / generate: decoding{untrained}", elem_id="decode")
                    ablation = gr.Radio([(ABLATION_LABELS[a], a) for a in ABLATIONS], value="none",
                                        label="Ablation", elem_id="ablation")
                    predict = gr.Button("Predict", variant="primary", elem_id="predict")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                text_head, text_bars = _panel("Text-only LLaRA", "text-panel")
                hybrid_head, hybrid_bars = _panel("Hybrid LLaRA", "hybrid-panel")
                rec_head, rec_bars = _panel("Recommender alone", "rec-panel")
            with gr.Accordion("Compare prompt parts", open=True, elem_id="parts"):
                user_part = ", user token" if "user" in model_parts(studio.predictor.model) else ""
                needs = "" if "next" in decodes else f"\n\n**{NEEDS_NEXT_HEAD}**"
                gr.Markdown(PARTS_INTRO.format(user=user_part) + needs, elem_id="parts-intro")
                compare = gr.Button("Compare prompt parts", elem_id="compare-parts")
                parts_status = gr.Markdown(elem_id="parts-status")
                parts_table = gr.Dataframe(label="One row per prompt", elem_id="parts-table", wrap=True,
                                           interactive=False, max_height=1200,
                                           column_widths=["11%", "17%", "15%", "45%", "12%"])
            with gr.Accordion("Prompt inspector", open=False, elem_id="inspector"):
                with gr.Row():
                    text_prompt = gr.HighlightedText(label="Text-only prompt", elem_id="text-prompt")
                    hybrid_prompt = gr.HighlightedText(label="Hybrid prompt (embedding slots highlighted)",
                                                       elem_id="hybrid-prompt")
                slots = gr.Dataframe(label="Embedding slots of the hybrid prompt", elem_id="slots", wrap=True)
            with gr.Accordion("Attributions: which watched movies drove the answer", open=True, elem_id="attributions"):
                with gr.Row():
                    target = gr.Dropdown(choices=[handlers.TOP_CHOICE], value=handlers.TOP_CHOICE, allow_custom_value=True,
                                         label="Candidate to explain", elem_id="attr-target", scale=2)
                    method = gr.Radio([(METHOD_LABELS[m], m) for m in ATTRIBUTION_METHODS], value=DEFAULT_METHOD,
                                      label="Method", elem_id="attr-method", scale=2)
                    explain = gr.Button("Explain", elem_id="attribute", scale=1)
                attr_status = gr.Markdown(elem_id="attr-status")
                with gr.Row(elem_id="attr-view"):
                    text_attr = gr.HighlightedText(label="Text-only prompt", elem_id="text-attr")
                    hybrid_attr = gr.HighlightedText(label="Hybrid prompt", elem_id="hybrid-attr")
                gr.Markdown("Colours: red pushed the explained answer up, purple pushed it down; the stronger the "
                            "colour, the larger the effect (scaled to the strongest word of each prompt). Sub-word "
                            "pieces are merged into words. Deletion (the default) removes each watched movie, "
                            "rebuilds the prompt and scores the answer again: a bar is what the answer's score "
                            "(log-softmax over the 20 candidates) loses without that movie, so it is exact for one "
                            "movie at a time but says nothing about movies removed together. Gradient × input and "
                            "integrated gradients score tokens (a movie's bar sums its title's tokens and its slot); "
                            "title / embedding removal scores each part by how much removing it lowers the answer's "
                            "score. On the faithfulness benchmark the token methods' top movie matters no more than "
                            "a random one (README, *Are they faithful?*).", elem_id="attr-legend")
                with gr.Row():  # one chart per prompt: the two prompts may explain different answers
                    # tall enough for the angled movie labels (the colours of split bars are named in the label)
                    text_bars_attr = gr.BarPlot(label=handlers.CHART_LABEL["text"], elem_id="text-item-bars", height=420)
                    hybrid_bars_attr = gr.BarPlot(label=handlers.CHART_LABEL["hybrid"], elem_id="hybrid-item-bars",
                                                  height=420)
        with gr.Tab("Results", elem_id="results-tab"):
            gr.Markdown(RESULTS_DOC.read_text() if RESULTS_DOC.is_file() else "No results document yet (docs/results.md).")
            if RESULTS_PLOT.is_file():
                from PIL import Image

                # the pixels, not the path: gradio then serves its own copy, whatever folder the app started from
                gr.Image(Image.open(RESULTS_PLOT).convert("RGB"), label="Training curves", show_label=True,
                         elem_id="results-plot", interactive=False, format="png")

        # Per-session request state (the loaded user's true item, the last prediction's answers): gradio keeps it on
        # the server, one per browser tab or API client, and leaves it out of the HTTP API's parameters.
        request = gr.State(None)
        load_user.click(call(handlers.load_test_user, studio), inputs=[user, seed, request],
                        outputs=[history, candidates, truth, request], api_name="load_test_user")
        redraw.click(call(handlers.draw_candidates, studio), inputs=[history, seed, cand_kind, request], outputs=candidates,
                     api_name="draw_candidates")
        find.click(call(handlers.search, studio), inputs=[query, history], outputs=found, api_name="search")
        query.submit(call(handlers.search, studio), inputs=[query, history], outputs=found, api_name=False)
        add.click(call(handlers.add_found, studio), inputs=[history, found], outputs=history, api_name="add_found")
        # a new history gets a new candidate draw (keeping a loaded user's true next movie), so Predict always has one
        history.change(call(handlers.follow_history, studio), inputs=[history, seed, cand_kind, request],
                       outputs=candidates, api_name=False)
        cand_kind.change(call(handlers.follow_history, studio), inputs=[history, seed, cand_kind, request],
                         outputs=candidates, api_name=False)
        candidates.change(handlers.target_choices, inputs=candidates, outputs=target, api_name=False)
        predict.click(on_gpu(call(handlers.predict, studio)), inputs=[history, candidates, decode, ablation, seed, request],
                      outputs=[text_head, text_bars, hybrid_head, hybrid_bars, rec_head, rec_bars, status, text_prompt,
                               hybrid_prompt, slots, request], api_name="predict")
        compare.click(on_gpu(call(handlers.compare_parts, studio)), inputs=[history, candidates, request],
                      outputs=[parts_status, parts_table], api_name="compare_parts")
        attr_outputs = [text_attr, hybrid_attr, text_bars_attr, hybrid_bars_attr, attr_status]
        # the previous explanation is cleared at once (an explanation takes seconds), then the new one is computed
        explain.click(handlers.explaining, inputs=method, outputs=attr_outputs, queue=False, api_name=False).then(
            on_gpu(call(handlers.attribute, studio)), inputs=[history, candidates, target, method, ablation, seed, decode,
                                                           request], outputs=[*attr_outputs, slots], api_name="attribute")
    return demo
