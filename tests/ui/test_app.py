"""The app: builds without loading a model; answers through gradio_client and in a real Chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_building_the_app_loads_no_model(tmp_path):
    from app import build_app
    from core.engine import Engine

    engine = Engine(tmp_path / "ws")
    demo = build_app(engine)
    assert engine.models.loaded() == []
    assert {"prompt", "ask", "answer"} <= {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert all((tmp_path / "ws" / name).is_dir() for name in ("runs", "indexes", "evals", "uploads"))


@pytest.mark.integration
def test_ask_through_gradio_client(live_app):
    from gradio_client import Client

    client = Client(live_app, verbose=False)
    answer, stats = client.predict("What is the capital of France?", "", 32, api_name="/ask")
    assert "Paris" in answer
    assert "tokens in" in stats
    with pytest.raises(Exception, match="prompt: is empty"):
        client.predict("   ", "", 32, api_name="/ask")


@pytest.mark.integration
def test_arena_through_gradio_client(live_app):
    from gradio_client import Client

    client = Client(live_app, verbose=False)
    variants = ["zero_shot", "few_shot", "rag", "finetuned"]
    status, cards = client.predict("What does error code E15 mean?", "E15 means the pump motor is jammed.", "qa", "",
                                   variants, [], "demo", 2, 3, 24, 0.0, api_name="/arena")
    assert status.startswith("3 of 4 variants answered")
    assert cards.count("<div class='ta-card'>") == 3 and cards.count("ta-card ta-off") == 1
    assert "no fine-tuned run chosen" in cards  # a fresh workspace has no run yet
    assert cards.count("ROUGE-L") == 3 and "Retrieved passages" in cards and "error-codes.md" in cards
    with pytest.raises(Exception, match="Type a query first"):
        client.predict(" ", "", "", "", variants, [], "demo", 2, 3, 24, 0.0, api_name="/arena")


@pytest.mark.browser
@pytest.mark.integration
def test_ask_in_chromium(live_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(live_app)
            page.get_by_role("tab", name="Ask").click()  # Arena is the first tab
            page.locator("#prompt textarea").fill("What is the capital of France?")
            page.locator("#ask").click()
            expect(page.locator("#answer textarea")).to_have_value(re.compile("Paris"), timeout=90_000)
            expect(page.locator("#stats")).to_contain_text("tokens in")
            page.screenshot(path=os.environ.get("TUNE_ARENA_SCREENSHOT", str(tmp_path / "ask.png")), full_page=True)
        finally:
            browser.close()
