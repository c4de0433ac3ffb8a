"""Tune Arena: `python app.py` serves the Gradio app on http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT honoured).

Nothing heavy happens at import: the engine loads models on first use. At launch a background thread indexes the
demo corpus and loads the base model, so the first Arena query does not wait for them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; must be set before gradio loads

import gradio as gr  # noqa: E402

from core.engine import Engine  # noqa: E402
from core.engine.uploads import MAX_UPLOAD_BYTES  # noqa: E402
from ui import arena, evaluate, knowledge, runs, train  # noqa: E402
from ui.common import index_choices, run_choices  # noqa: E402
from ui.verdict import arena_verdict  # noqa: E402

TITLE = "Tune Arena"
QUEUE_SIZE = 64  # queued requests (all events together) before Gradio answers "queue is full"
CSS = "\n".join(getattr(module, "CSS", "") for module in (arena, evaluate, train, knowledge, runs))
logger = logging.getLogger("tune_arena.app")


def build_app(engine: Engine | None = None) -> gr.Blocks:
    """The app's Blocks over one engine (a new default engine if none is given). The engine is confined from here
    on: its callers are remote users, so runs, indexes and evaluations are only those of its own workspace."""
    engine = engine or Engine()
    engine.confined = True
    engine.install_demo_run()  # the shipped demo adapter, so the Arena shows fine-tuned variants at once
    try:  # the shipped evaluation, so the Evaluate tab opens on its verdict without a click
        engine.install_demo_eval()
    except OSError as err:  # the app works without it
        logger.warning("demo evaluation not installed: %s", err)
    engine.install_demo_eval()  # the shipped demo evaluation, so the Evaluate tab opens on its verdict
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nPrompting, RAG or fine-tuning? Compare them on your task, side by side.")
        with gr.Tabs():
            with gr.Tab("Arena", id="arena") as arena_tab:
                arena_parts = arena.create_arena_tab(engine)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_tab:
                evaluate_parts = evaluate.create_evaluate_tab(engine)
            with gr.Tab("Train", id="train"):
                train.create_train_tab(engine)
            with gr.Tab("Knowledge base", id="knowledge") as knowledge_tab:
                knowledge.create_knowledge_tab(engine, knowledge_tab)
            with gr.Tab("Runs", id="runs") as runs_tab:
                runs.create_runs_tab(engine, runs_tab)

        # a run trained or an index built in another tab shows up in the pickers when their tab is opened
        for tab, parts in ((arena_tab, arena_parts), (evaluate_tab, evaluate_parts)):
            pickers = [parts[key] for key in ("adapter", "index") if key in parts]
            if len(pickers) == 2:
                tab.select(lambda: (gr.update(choices=run_choices(engine)), gr.update(choices=index_choices(engine))),
                           None, pickers, queue=False)
        # an evaluation saved in the Evaluate tab shows up under the Arena's cards when the Arena is opened again
        arena_tab.select(lambda task: arena_verdict(engine, task), [arena_parts["task"]], [arena_parts["verdict"]],
                         queue=False, api_visibility="private")
    return demo


def warm_up(engine: Engine) -> threading.Thread:
    """Index the demo corpus and load the base model in the background (errors are logged, not raised)."""
    def work() -> None:
        try:
            engine.ensure_demo_index()
            engine.host()
        except Exception as err:  # the tabs report the same problem when a user gets there
            logger.warning("warm-up failed: %s", err)

    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    return thread


def launch_options(engine: Engine) -> dict[str, Any]:
    """``demo.launch`` settings: the address (GRADIO_SERVER_NAME/PORT), files served only from the workspace
    (besides Gradio's own upload and cache folders), and uploads refused by Gradio itself past the upload limit
    (before a byte of them lands on disk beyond it)."""
    return {"css": CSS, "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
            "allowed_paths": [str(engine.workspace.root.resolve())], "max_file_size": MAX_UPLOAD_BYTES}


def main() -> None:
    logging.basicConfig(level=os.environ.get("TUNE_ARENA_LOG", "INFO"))
    engine = Engine(confined=True)
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)
    warm_up(engine)
    demo.launch(**launch_options(engine))


if __name__ == "__main__":
    main()
