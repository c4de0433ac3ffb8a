"""The app: builds without loading a model, with every tab and the demo adapter; the Arena through gradio_client."""

from __future__ import annotations

import pytest


def test_building_the_app_loads_no_model(tmp_path):
    from app import build_app
    from core.engine import Engine

    engine = Engine(tmp_path / "ws")
    demo = build_app(engine)
    assert engine.models.loaded() == []
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"arena-run", "arena-blind", "arena-vote", "train-start", "train-stop", "train-chart", "train-from-votes",
            "lb-table", "lb-export"} <= ids
    top = next(block for block in demo.blocks.values() if type(block).__name__ == "Tabs")  # the first: the app's
    assert [tab.label for tab in top.children] == ["Arena", "Evaluate", "Benchmarks", "Leaderboard", "Train",
                                                   "Knowledge base", "Runs"]
    assert {"bench-tasks", "bench-runs", "bench-run", "bench-stop", "bench-table", "bench-past"} <= ids
    assert [run.run_id for run in engine.runs.list()] == ["demo-quick-lora"]  # the shipped adapter, ready
    assert all((tmp_path / "ws" / name).is_dir() for name in ("runs", "indexes", "evals", "uploads"))


@pytest.mark.integration
def test_arena_through_gradio_client(live_app):
    from gradio_client import Client

    client = Client(live_app, verbose=False)
    variants = ["zero_shot", "few_shot", "rag", "finetuned"]
    status, cards = client.predict("What does error code E15 mean?", "E15 means the pump motor is jammed.", "qa", "",
                                   variants, [], "demo", 2, 3, 24, 0.0, api_name="/arena")
    assert status.startswith("3 of 4 variants answered")
    assert cards.count("<div class='ta-card'>") == 3 and cards.count("ta-card ta-off") == 1
    assert "no fine-tuned run chosen" in cards  # no run passed (the demo run is only preselected in the UI)
    assert cards.count("ROUGE-L") == 3 and "Retrieved passages" in cards and "error-codes.md" in cards
    with pytest.raises(Exception, match="/no/such/model"):  # a base model typed in Settings that does not exist
        client.predict("Tank?", "", "", "", ["zero_shot"], [], "demo", 2, 3, 8, 0.0, 1.0, 1.0, "", "/no/such/model",
                       api_name="/arena")
    status, cards = client.predict("Name two colours.", "", "", "", ["zero_shot"], [], "demo", 2, 3, 48, 0.0, 1.0,
                                   1.0, ",\n.\nand", "", api_name="/arena")
    answer = cards.split("class='ta-answer'>")[1].split("</div>")[0]
    assert status.startswith("1 of 1") and "," not in answer and "." not in answer  # cut at the first stop string
    with pytest.raises(Exception, match="Type a query first"):
        client.predict(" ", "", "", "", variants, [], "demo", 2, 3, 24, 0.0, api_name="/arena")
