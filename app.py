"""Tune Arena: `python app.py` serves the Gradio app on http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT honoured).

Nothing heavy happens at import: the engine loads models on first use.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; must be set before gradio loads

import gradio as gr  # noqa: E402

from core.engine import Engine  # noqa: E402
from ui.arena import CSS, create_arena_tab  # noqa: E402
from ui.ask import create_ask_tab  # noqa: E402

TITLE = "Tune Arena"


def build_app(engine: Engine | None = None) -> gr.Blocks:
    """The app's Blocks over one engine (a new default engine if none is given)."""
    engine = engine or Engine()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nPrompting, RAG or fine-tuning? Compare them on your task, side by side.")
        with gr.Tab("Arena"):
            create_arena_tab(engine)
        with gr.Tab("Ask"):
            create_ask_tab(engine)
    return demo


def main() -> None:
    logging.basicConfig(level=os.environ.get("TUNE_ARENA_LOG", "INFO"))
    demo = build_app()
    demo.queue(default_concurrency_limit=2)
    demo.launch(
        css=CSS,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )


if __name__ == "__main__":
    main()
