"""Leaderboard tab: ratings, intervals and metric agreement as tables (pure helpers), and the tab's handlers over a
workspace with votes (the engine's real leaderboard on the tiny vote file written here)."""

from __future__ import annotations

import gradio as gr

from ui.leaderboard import agreement_frame, rating_frame, summary_text


def test_ratings_are_ranked_best_first_with_their_interval_and_votes():
    frame = rating_frame([{"name": "zero_shot", "rating": 951.4, "low": 900.2, "high": 1003.0, "votes": 8, "wins": 2},
                          {"name": "rag", "rating": 1048.6, "low": 997.0, "high": 1101.9, "votes": 8, "wins": 5.5}])
    assert frame["name"].tolist() == ["rag", "zero_shot"] and frame["#"].tolist() == [1, 2]
    assert frame["95% interval"].tolist() == ["997 – 1102", "900 – 1003"] and frame["rating"].tolist() == [1049, 951]
    assert frame["wins"].tolist() == ["5.5", 2]


def test_agreement_reads_as_a_share_of_the_votes_with_a_reference():
    frame = agreement_frame({"rougeL": {"agree": 3, "n": 4, "share": 0.75}, "bleu": {"agree": 0, "n": 0,
                                                                                      "share": None}})
    assert frame.iloc[0].tolist() == ["ROUGE-L", "75% (3 of 4)", 4] and frame.iloc[1].tolist() == ["BLEU", "–", 0]


def test_the_summary_says_how_to_vote_before_there_are_votes():
    assert "Blind vote" in summary_text({"votes": 0}) and "**12 votes**" in summary_text({"votes": 12})


def test_the_tab_rates_the_workspace_votes_and_exports_them(tmp_path):
    from core.engine import Engine
    from ui.leaderboard import create_leaderboard_tab

    engine = Engine(tmp_path / "ws", confined=True)
    arena = {"query": "Tank size?", "reference": "5.5 litres.", "task": "qa",
             "results": [{"variant": "zero_shot", "strategy": "zero_shot", "adapter": None, "available": True,
                          "answer": "5.5 litres.", "prompt": "p", "metrics": {"rougeL": 1.0}},
                         {"variant": "rag", "strategy": "rag", "adapter": None, "available": True,
                          "answer": "Ten litres.", "prompt": "q", "metrics": {"rougeL": 0.3}}]}
    for _ in range(4):
        engine.record_vote(arena, "zero_shot", shown=["rag", "zero_shot"])
    with gr.Blocks() as demo:
        parts = create_leaderboard_tab(engine)
    handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
    fn, _, _ = parts["refresh"]
    summary, table, task, per_task, agreement, board = fn("variant", None)
    assert "**4 votes**" in summary and table["name"].tolist()[0] == "zero_shot"
    assert task["value"] == "qa" and per_task["name"].tolist()[0] == "zero_shot"
    assert agreement.iloc[0].tolist()[1] == "100% (4 of 4)"
    path, line = handlers["on_export"]()
    assert line.startswith("4 pairs from 4 votes") and path.endswith("preferences.jsonl")
