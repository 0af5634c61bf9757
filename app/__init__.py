"""The LLaRA-Studio Gradio UI (wiring only: every decision lives in the library or app.handlers)."""
from __future__ import annotations

import functools

import gradio as gr

from . import handlers
from .state import Studio

TITLE = "LLaRA-Studio"
INTRO = (
    "Pick the movies a user watched, in order, and see what the sequential recommenders predict next. "
    "The recommenders are the ones whose item embeddings LLaRA projects into its language model."
)


def build_demo(studio: Studio) -> gr.Blocks:
    """The Blocks app for an already loaded ``studio``."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            history = gr.Dropdown(choices=studio.labels, multiselect=True, label="Watched movies (oldest first, up to 10)",
                                  elem_id="history")
        with gr.Row():
            model = gr.Radio(choices=list(studio.recommenders), value=next(iter(studio.recommenders)), label="Recommender")
            k = gr.Slider(1, 50, value=10, step=1, label="How many recommendations")
        with gr.Row():
            user = gr.Textbox(label="Test user id (empty = random)", max_lines=1, max_length=12)
            load_user = gr.Button("Load a real test user")
            predict = gr.Button("Recommend", variant="primary", elem_id="predict")
        truth = gr.Markdown()
        status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(headers=["rank", "movie", "score"], label="Predicted next movies", elem_id="predictions")
        load_user.click(functools.partial(handlers.load_test_user, studio), inputs=user, outputs=[history, truth], api_name="load_test_user")
        predict.click(functools.partial(handlers.recommend, studio), inputs=[history, model, k], outputs=[table, status], api_name="recommend")
    return demo
