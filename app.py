"""Tune Arena: `python app.py` serves the Gradio app on http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT honoured).

Nothing heavy happens at import: the engine loads models on first use. At launch a background thread indexes the
demo corpus and loads the base model, so the first Arena query does not wait for them.

On a Hugging Face Space (``$SPACE_ID``) or with ``TUNE_ARENA_MULTI_USER=1`` the app is shared: every visitor works in
a private workspace of their own, within quotas (core.engine.visitors, ui.visitors; README "Running as a public
Space").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; must be set before gradio loads

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from core.engine import Engine  # noqa: E402
from core.engine.uploads import MAX_UPLOAD_BYTES  # noqa: E402
from core.engine.visitors import VisitorSettings  # noqa: E402
from core.text import fmt_bytes  # noqa: E402
from ui import arena, benchmarks, evaluate, knowledge, leaderboard, runs, train  # noqa: E402
from ui.common import index_choices, run_choices  # noqa: E402
from ui.verdict import arena_verdict  # noqa: E402
from ui.visitors import VisitorMiddleware, scoped, visitor_of  # noqa: E402

TITLE = "Tune Arena"
QUEUE_SIZE = 64  # queued requests (all events together) before Gradio answers "queue is full"
CSS = "\n".join(getattr(module, "CSS", "") for module in (arena, evaluate, leaderboard, train, knowledge, runs))
logger = logging.getLogger("tune_arena.app")


def build_app(engine: Engine | None = None) -> gr.Blocks:
    """The app's Blocks over one engine (a new default engine if none is given). The engine is confined from here
    on: its callers are remote users, so runs, indexes and evaluations are only those of its own workspace (on a
    shared instance, each visitor's own: every handler works with ``ui.visitors.scoped(engine, request)``)."""
    engine = engine or Engine()
    engine.confined = True
    engine.install_demo_run()  # the shipped demo adapter, so the Arena shows fine-tuned variants at once
    try:  # the shipped evaluation, so the Evaluate tab opens on its verdict without a click
        engine.install_demo_eval()
    except OSError as err:  # the app works without it
        logger.warning("demo evaluation not installed: %s", err)
    settings = engine.visitors.settings if engine.visitors is not None else None
    # shared: Gradio's own copies of uploads and downloads (its cache, outside the workspaces) go with the sweep's age
    cache_ttl = None if settings is None else (int(settings.sweep_every_s), int(settings.ttl_hours * 3600))
    with gr.Blocks(title=TITLE, delete_cache=cache_ttl) as demo:
        gr.Markdown(f"# {TITLE}\nPrompting, RAG or fine-tuning? Compare them on your task, side by side.")
        if engine.visitors is not None:
            with gr.Row():
                visitor = gr.Markdown(elem_id="visitor-info")
                if login_available():
                    gr.LoginButton(scale=0)
        with gr.Tabs():
            with gr.Tab("Arena", id="arena") as arena_tab:
                arena_parts = arena.create_arena_tab(engine)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_tab:
                evaluate_parts = evaluate.create_evaluate_tab(engine)
            with gr.Tab("Benchmarks", id="benchmarks") as benchmarks_tab:
                benchmarks_parts = benchmarks.create_benchmarks_tab(engine)
            with gr.Tab("Leaderboard", id="leaderboard") as leaderboard_tab:
                leaderboard_parts = leaderboard.create_leaderboard_tab(engine)
            with gr.Tab("Train", id="train") as train_tab:
                train_parts = train.create_train_tab(engine)
            with gr.Tab("Knowledge base", id="knowledge") as knowledge_tab:
                knowledge_parts = knowledge.create_knowledge_tab(engine, knowledge_tab)
            with gr.Tab("Runs", id="runs") as runs_tab:
                runs_parts = runs.create_runs_tab(engine, runs_tab)

        # a run trained or an index built in another tab shows up in the pickers when their tab is opened
        def pickers(request: gr.Request | None = None):
            scoped_engine = scoped(engine, request)
            return gr.update(choices=run_choices(scoped_engine)), gr.update(choices=index_choices(scoped_engine))

        for tab, parts in ((arena_tab, arena_parts), (evaluate_tab, evaluate_parts)):
            chosen = [parts[key] for key in ("adapter", "index") if key in parts]
            if len(chosen) == 2:
                tab.select(pickers, None, chosen, queue=False, api_visibility="private")

        fn, inputs, outputs = leaderboard_parts["refresh"]  # the votes cast so far, whenever the tab is opened
        leaderboard_tab.select(fn, inputs, outputs, api_visibility="private")
        fn, inputs, outputs = benchmarks_parts["refresh"]  # runs trained and benchmarks saved since, when opened
        benchmarks_tab.select(fn, inputs, outputs, queue=False, api_visibility="private")

        # an evaluation saved in the Evaluate tab shows up under the Arena's cards when the Arena is opened again
        def verdict(task: str | None, request: gr.Request | None = None) -> str:
            return arena_verdict(scoped(engine, request), task)

        arena_tab.select(verdict, [arena_parts["task"]], [arena_parts["verdict"]], queue=False,
                         api_visibility="private")
        if engine.visitors is not None:  # a returning visitor's own runs, indexes and data in the pickers at once
            def who(request: gr.Request | None = None) -> str:
                return visitor_line(engine, request)

            demo.load(who, None, [visitor], queue=False, api_visibility="private")
            for tab, parts in ((train_tab, train_parts), (knowledge_tab, knowledge_parts), (runs_tab, runs_parts),
                               (arena_tab, arena_parts), (evaluate_tab, evaluate_parts),
                               (benchmarks_tab, benchmarks_parts)):
                if "refresh" in parts:
                    fn, inputs, outputs = parts["refresh"]
                    demo.load(fn, inputs, outputs, queue=False, api_visibility="private")
                    if tab is train_tab:  # the other tabs refresh their pickers when opened already
                        tab.select(fn, inputs, outputs, queue=False, api_visibility="private")
    return demo


def login_available() -> bool:
    """Sign-in with Hugging Face: a Space (``SYSTEM=spaces``, ``SPACE_ID``) with ``hf_oauth: true`` (it sets
    OAUTH_CLIENT_ID) and Gradio's OAuth packages installed. Elsewhere Gradio would fake the sign-in with the machine's
    own Hugging Face token (and refuse to build the app without one)."""
    if not os.environ.get("OAUTH_CLIENT_ID"):
        return False
    if os.environ.get("SYSTEM") != "spaces" or not os.environ.get("SPACE_ID"):
        logger.warning("OAUTH_CLIENT_ID is set outside a Hugging Face Space: no sign-in button")
        return False
    try:
        import authlib  # noqa: F401
        import itsdangerous  # noqa: F401
    except ImportError:
        logger.warning("OAUTH_CLIENT_ID is set but authlib/itsdangerous are missing: no sign-in button")
        return False
    return True


def visitor_line(engine: Engine, request: gr.Request | None) -> str:
    """Who the visitor is to this app, how much of their disk quota they use, and what happens to their work."""
    visitors = engine.visitors
    found = visitor_of(request)
    view = visitors.engine(found)
    used = fmt_bytes(view.workspace.bytes_of())
    most = fmt_bytes(visitors.settings.disk_bytes)
    if found.signed_in:
        kept = ("kept across restarts" if visitors.settings.persistent is not None
                else "kept until this Space restarts (no persistent storage)")
        return f"Signed in as **{found.name}**: your runs, indexes and uploads are private to you, {kept} · {used} " \
               f"of {most} used"
    hours = f"{visitors.settings.ttl_hours:g}"
    login = " Sign in with Hugging Face to keep them." if login_available() else ""
    return (f"Your runs, indexes and uploads are **private to this browser** and removed after {hours} h without a "
            f"visit.{login} · {used} of {most} used · at most {visitors.settings.uploads_per_hour} uploads an hour")


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
    (before a byte of them lands on disk beyond it). A shared instance adds ui.visitors' middleware: a visitor
    cookie, and the file route refused for every workspace file that is not the asking visitor's own."""
    allowed = [str(engine.workspace.root.resolve())]
    options: dict[str, Any] = {"css": CSS, "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                               "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                               "allowed_paths": allowed, "max_file_size": MAX_UPLOAD_BYTES}
    if engine.visitors is not None:
        persistent = engine.visitors.settings.persistent
        if persistent is not None:
            persistent.mkdir(parents=True, exist_ok=True)
            allowed.append(str(persistent.resolve()))
        middleware = Middleware(VisitorMiddleware, visitors=engine.visitors, secure=bool(os.environ.get("SPACE_ID")))
        options["app_kwargs"] = {"middleware": [middleware]}
    return options


def main() -> None:
    logging.basicConfig(level=os.environ.get("TUNE_ARENA_LOG", "INFO"))
    engine = Engine(confined=True, visitors=VisitorSettings.from_env())
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)
    warm_up(engine)
    if engine.visitors is not None:
        settings = engine.visitors.settings
        logger.info("shared instance: visitors' workspaces under %s (signed in: %s); %g MB each, %d uploads an hour, "
                    "%d steps a CPU job, anonymous ones swept after %g h", engine.visitors.root,
                    settings.persistent or engine.visitors.root, settings.disk_mb, settings.uploads_per_hour,
                    settings.cpu_max_steps, settings.ttl_hours)
        engine.visitors.start_sweeper()
    demo.launch(**launch_options(engine))


if __name__ == "__main__":
    main()
