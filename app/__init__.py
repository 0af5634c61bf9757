"""The LLaRA-Studio Gradio UI: layout and wiring only (decisions live in app.handlers and the llara library)."""
from __future__ import annotations

import functools

import gradio as gr

from . import handlers, switch
from .gpu import on_gpu  # ZeroGPU: the handlers that run the model get a GPU
from .layout import RESULTS_DOC, RESULTS_PLOT, TITLE, catalog_schema, layout, page, seed_input
from .state import Studio, Studios

__all__ = ["RESULTS_DOC", "RESULTS_PLOT", "TITLE", "build_demo", "catalog_schema", "seed_input"]


def build_demo(source: Studio | Studios) -> gr.Blocks:
    """The Blocks app for an already loaded ``studio``, or for ``Studios`` (the dataset switch: the default dataset
    is loaded here, the others on first use).

    Dropdowns allow custom values on purpose: gradio's own check would answer an unknown title over the HTTP API
    with the whole catalog (40 KB) and echo the input; our handlers answer with one sentence instead."""
    studios = source if isinstance(source, Studios) else Studios.single(source)
    studio = studios.studio(studios.default)
    with gr.Blocks(title=TITLE) as demo:
        ui = layout(studio, studios)
        d, request = ui.dataset, ui.request

        def on(handler):  # every handler runs on the studio of the session's dataset (the first input)
            return switch.bind(studios, handler)

        if ui.choice is not None:
            outputs = [ui.dataset, ui.choice, *page(ui, studio)]
            ui.choice.input(functools.partial(switch.switch, studios, ui), inputs=[ui.choice, d], outputs=outputs,
                            api_name=False)
        ui.load_user.click(on(handlers.load_test_user), inputs=[d, ui.user, ui.seed, request],
                           outputs=[ui.history, ui.candidates, ui.truth, request], api_name="load_test_user")
        ui.redraw.click(on(handlers.draw_candidates), inputs=[d, ui.history, ui.seed, ui.cand_kind, request],
                        outputs=ui.candidates, api_name="draw_candidates")
        ui.find.click(on(handlers.search), inputs=[d, ui.query, ui.history], outputs=ui.found, api_name="search")
        ui.query.submit(on(handlers.search), inputs=[d, ui.query, ui.history], outputs=ui.found, api_name=False)
        ui.add.click(on(handlers.add_found), inputs=[d, ui.history, ui.found], outputs=ui.history, api_name="add_found")
        ui.examples.click(on(switch.pick_example), inputs=[d, ui.examples], outputs=ui.history, api_name=False)
        # a new history gets a new candidate draw (keeping a loaded user's true next item), so Predict always has one
        for changed in (ui.history, ui.cand_kind):
            changed.change(on(handlers.follow_history), inputs=[d, ui.history, ui.seed, ui.cand_kind, request],
                           outputs=ui.candidates, api_name=False)
        ui.candidates.change(handlers.target_choices, inputs=ui.candidates, outputs=ui.target, api_name=False)
        ui.predict.click(on_gpu(on(handlers.predict)),
                         inputs=[d, ui.history, ui.candidates, ui.decode, ui.ablation, ui.seed, request],
                         outputs=[ui.text_head, ui.text_bars, ui.hybrid_head, ui.hybrid_bars, ui.rec_head, ui.rec_bars,
                                  ui.status, ui.text_prompt, ui.hybrid_prompt, ui.slots, request], api_name="predict")
        ui.compare.click(on_gpu(on(handlers.compare_parts)), inputs=[d, ui.history, ui.candidates, request],
                         outputs=[ui.parts_status, ui.parts_table], api_name="compare_parts")
        attr_outputs = [ui.text_attr, ui.hybrid_attr, ui.text_bars_attr, ui.hybrid_bars_attr, ui.attr_status]
        # the previous explanation is cleared at once (an explanation takes seconds), then the new one is computed
        ui.explain.click(lambda dataset, method: switch.explaining(studios, dataset, method), inputs=[d, ui.method],
                         outputs=attr_outputs, queue=False, api_name=False).then(
            on_gpu(on(handlers.attribute)), inputs=[d, ui.history, ui.candidates, ui.target, ui.method, ui.ablation,
                                                    ui.seed, ui.decode, request],
            outputs=[*attr_outputs, ui.slots], api_name="attribute")
    return demo
