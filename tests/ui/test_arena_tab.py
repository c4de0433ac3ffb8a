"""Arena tab: the latest saved evaluation's verdict under the cards (pure helpers and the handlers, no browser),
every registered variant on offer with the defaults ticked, the reference answer that follows the query, and each
visitor's own lists on a shared app."""

from __future__ import annotations

import html
import json
import os

import pytest
from verdict_helpers import SENTENCES, install_eval

from ui.verdict import arena_verdict, latest_verdict, latest_verdict_html


def _row(name: str, tasks: list[str], **extra) -> dict:
    return {"name": name, "folder": f"/ws/evals/{name}", "n": 10, "by_task": {"zero_shot": dict.fromkeys(tasks, {})},
            **extra}


def test_latest_verdict_takes_the_newest_evaluation_with_a_verdict_for_the_task():
    verdicts = {"/ws/evals/new": {"verdict": {"qa": {"sentence": "new qa"}}},
                "/ws/evals/older": {"verdict": {"qa": {"sentence": "older qa"},
                                                "classification": {"sentence": "older classification"}}},
                "/ws/evals/no-verdict": {}}
    evals = [_row("no-verdict", ["qa", "classification"]), _row("new", ["qa"]), _row("broken", [], error="bad"),
             _row("older", ["qa", "classification"])]
    load = verdicts.__getitem__
    row, verdict = latest_verdict(evals, "qa", load)
    assert row["name"] == "new" and verdict["sentence"] == "new qa"
    row, verdict = latest_verdict(evals, "classification", load)
    assert row["name"] == "older" and verdict["sentence"] == "older classification"
    assert latest_verdict(evals, "summarization", load) is None
    assert latest_verdict(evals, "", load) is None and latest_verdict(evals, None, load) is None

    def unreadable(folder: str) -> dict:
        if folder.endswith("/new"):
            raise OSError("gone")
        return verdicts[folder]

    assert latest_verdict(evals, "qa", unreadable)[0]["name"] == "older"  # one unreadable file is skipped


def test_latest_verdict_html_names_the_evaluation_and_escapes():
    row = _row("<b>e1</b>", ["qa"])
    text = latest_verdict_html((row, {"sentence": "few_shot <wins>", "status": "win", "winner": "few_shot",
                                      "winner_mean": 0.5}), "qa")
    assert "Latest evaluation (<b>&lt;b&gt;e1&lt;/b&gt;</b>, 10 rows) for this task:" in text
    assert "few_shot &lt;wins&gt;" in text and "<wins>" not in text and "Winner <b>few_shot</b>" in text
    assert latest_verdict_html(None, "qa") == ""


def test_arena_verdict_reads_the_workspace_newest_first(tmp_path):
    from core.engine import Engine

    workspace = tmp_path / "ws"
    engine = Engine(workspace, confined=True)
    assert arena_verdict(engine, "qa") == ""  # no evaluation yet
    demo = install_eval(workspace, "demo-eval")
    text = arena_verdict(engine, "qa")
    assert "Latest evaluation (<b>demo-eval</b>, 6 rows)" in text and html.escape(SENTENCES["qa"]) in text
    assert html.escape(SENTENCES["classification"]) not in text  # only the query's task
    assert arena_verdict(engine, "summarization") == "" and arena_verdict(engine, None) == ""

    newer = install_eval(workspace, "20250101-000000-test-abcd")  # sorts below demo-eval by name, written later
    saved = json.loads((newer / "results.json").read_text())
    saved["verdict"]["qa"]["sentence"] = "The newer evaluation says rag."
    (newer / "results.json").write_text(json.dumps(saved))
    os.utime(demo / "results.json", (1_000_000_000, 1_000_000_000))
    assert "The newer evaluation says rag." in arena_verdict(engine, "qa")


def _fn_writing(blocks, component):
    return next(fn.fn for fn in blocks.fns.values() if fn.outputs == [component])


def test_the_tab_shows_the_verdict_for_the_query_task_and_offers_every_variant(tmp_path):
    import gradio as gr

    from core.arena import DEFAULT_VARIANTS, STRATEGIES
    from core.engine import Engine
    from ui.arena import create_arena_tab

    workspace = tmp_path / "ws"
    install_eval(workspace, "demo-eval")
    engine = Engine(workspace, confined=True)
    with gr.Blocks() as blocks:
        parts = create_arena_tab(engine)
    assert engine.models.loaded() == []
    assert [value for value, *_ in parts["variants"].choices] == list(STRATEGIES)
    assert parts["variants"].value == list(DEFAULT_VARIANTS)
    assert parts["task"].value == "qa"  # the first demo question
    assert html.escape(SENTENCES["qa"]) in parts["verdict"].value
    on_task = _fn_writing(blocks, parts["verdict"])
    assert html.escape(SENTENCES["classification"]) in on_task("classification")
    assert on_task("summarization") == "" and on_task("") == ""


def test_the_tab_without_evaluations_shows_no_verdict(tmp_path):
    import gradio as gr

    from core.engine import Engine
    from ui.arena import create_arena_tab

    with gr.Blocks():
        parts = create_arena_tab(Engine(tmp_path / "ws"))
    assert parts["verdict"].value == ""


def test_a_linked_evaluation_folder_is_not_read(tmp_path):
    from core.engine import Engine

    workspace = tmp_path / "ws"
    outside = install_eval(tmp_path / "elsewhere", "demo-eval")
    (workspace / "evals").mkdir(parents=True)
    (workspace / "evals" / "demo-eval").symlink_to(outside, target_is_directory=True)  # leads out of the workspace
    engine = Engine(workspace, confined=True)
    assert arena_verdict(engine, "qa") == ""

    import gradio as gr

    from ui.evaluate import create_evaluate_tab

    with gr.Blocks():
        parts = create_evaluate_tab(engine)
    assert parts["verdict"].value == "" and not (outside / "report.html").exists()


def _event(blocks, component, event: str):
    return next(fn for fn in blocks.fns.values() if fn.targets == [(component._id, event)])


def test_a_query_typed_by_hand_drops_the_demo_reference_and_a_pick_brings_it_back(tmp_path):
    """The browser side (the JS clearing the boxes) runs in tests/ui/test_browser_reference.py."""
    import gradio as gr

    from core.data import demo_path, load_examples
    from core.engine import Engine
    from ui.arena import CLEAR_REFERENCE, create_arena_tab

    with gr.Blocks() as blocks:
        parts = create_arena_tab(Engine(tmp_path / "ws"))
    rows = load_examples(demo_path("test.jsonl")).examples
    assert (parts["query"].value, parts["reference"].value) == (rows[0].instruction, rows[0].output)
    edit = _event(blocks, parts["query"], "input")  # typing only: not when a pick fills the query
    assert edit.fn is None and edit.js == CLEAR_REFERENCE  # in the browser: nothing to race with the next keys
    assert edit.outputs == [parts["reference"], parts["pick"]]  # the pick too: any question can be picked again
    pick = _event(blocks, parts["pick"], "change")
    assert pick.outputs[:2] == [parts["query"], parts["reference"]]
    query, reference, *_ = pick.fn(3)
    assert (query, reference) == (rows[3].instruction, rows[3].output) and reference


def _request(secret: str):
    import gradio as gr

    return gr.Request(session_hash=secret)  # a browser session: its visitor's engine (ui.visitors.scoped)


def test_on_a_shared_app_each_visitor_sees_their_own_runs_and_verdicts(tmp_path):
    import gradio as gr

    from core.engine import Engine
    from core.engine.visitors import VisitorSettings
    from core.errors import ConfigError
    from ui.arena import create_arena_tab
    from ui.visitors import scoped

    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    alice, bob = _request("alice-browser-secret"), _request("bob-browser-secret")
    install_eval(scoped(engine, alice).workspace.root, "20250101-000000-test-abcd")  # alice's own evaluation
    with gr.Blocks():
        parts = create_arena_tab(engine)
    assert parts["verdict"].value == ""  # what a new visitor sees: the instance holds no evaluation
    refresh, inputs, outputs = parts["refresh"]
    assert inputs == [parts["task"]] and outputs == [parts["adapter"], parts["index"], parts["verdict"]]
    *_, verdict = refresh("qa", alice)
    assert html.escape(SENTENCES["qa"]) in verdict and "20250101-000000-test-abcd" in verdict
    assert refresh("qa", bob)[-1] == ""
    with pytest.raises(ConfigError, match="needs a browser session"):
        refresh("qa", None)


# --------------------------------------------------------------------------------------------------------------------
# Blind votes: the cards a person votes on
# --------------------------------------------------------------------------------------------------------------------


def _answers() -> list[dict]:
    return [{"variant": "zero_shot", "available": True, "answer": "It holds 5.5 litres.", "latency_s": 1.0,
             "metrics": {"rougeL": 0.8}, "prompt": "<zero-shot prompt>", "retrieved": []},
            {"variant": "rag", "available": True, "answer": "Five litres.", "latency_s": 2.0,
             "metrics": {"rougeL": 0.2}, "prompt": "<rag prompt>",
             "retrieved": [{"score": 0.9, "source": "docs/tank.md", "text": "The tank holds 5.5 litres."}]},
            {"variant": "finetuned", "available": False, "error": "no fine-tuned run chosen"}]


def test_blind_cards_show_the_answers_alone_under_letters_in_the_order_given():
    from ui.arena import render_cards

    blind = render_cards(_answers(), order=[1, 0], blind=True)
    assert blind.index("Five litres.") < blind.index("It holds 5.5 litres.")  # the shuffled order
    assert "<h3>A</h3>" in blind and "<h3>B</h3>" in blind
    for hint in ("zero_shot", "rag", "ROUGE-L", "prompt", "tank.md", " s</span>"):  # nothing tells them apart
        assert hint not in blind, hint
    revealed = render_cards(_answers(), order=[1, 0])
    assert "<h3>A · rag</h3>" in revealed and "<h3>B · zero_shot</h3>" in revealed and "ROUGE-L" in revealed
    plain = render_cards(_answers())
    assert "<h3>zero_shot</h3>" in plain and "Unavailable" in plain  # without a vote: as before


def test_a_vote_is_on_the_available_answers_shuffled_when_blind():
    import random

    from ui.arena import vote_choices, vote_order

    assert vote_order(_answers(), False, random.Random(0)) == [0, 1]  # the unavailable one is not voted on
    orders = {tuple(vote_order(_answers() * 3, True, random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1 and all(sorted(order) == [0, 1, 3, 4, 6, 7] for order in orders)
    assert [value for _, value in vote_choices(2)] == ["A", "B", "tie", "all_bad"]
