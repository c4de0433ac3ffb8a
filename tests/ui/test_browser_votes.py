"""Blind votes in the Arena, as a person casts them in Chromium, then the Leaderboard tab; and 20 votes sent at once
through the app's API, none lost."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS

VARIANTS = ("zero_shot", "finetuned")  # two cards a vote: enough to rank, quick on two cores
QUERIES = 10


def _votes(workspace: Path) -> list[dict]:
    path = workspace / "feedback" / "votes.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


@pytest.mark.browser
@pytest.mark.integration
def test_blind_votes_in_the_arena_fill_the_leaderboard_in_chromium(live_app, live_workspace):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    before = len(_votes(live_workspace))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(live_app)
            expect(page.locator("#arena-query textarea")).not_to_have_value("")
            for name in ("few_shot", "rag", "finetuned_rag"):
                page.locator("#arena-variants").get_by_label(name, exact=True).uncheck()
            page.locator("#arena-blind").get_by_role("checkbox").check()
            choices = ["A", "B", "tie", "A", "all_bad", "B", "A", "A", "B", "A"]
            for number, choice in enumerate(choices):
                page.locator("#arena-pick input").click()
                page.get_by_role("option").nth(number).click()
                page.wait_for_timeout(300)
                page.locator("#arena-run").click()
                expect(page.locator("#arena-status")).to_contain_text("pick the best answer", timeout=180_000)
                titles = page.locator("#arena-cards .ta-card h3").all_inner_texts()
                assert titles == ["A", "B"], titles  # names hidden while voting
                assert not any(variant in page.locator("#arena-cards").inner_text() for variant in VARIANTS)
                if number == 0:
                    page.screenshot(path=str(ARTIFACTS / "12-arena-blind.png"), full_page=True)
                expect(page.locator("#arena-vote-row")).to_be_visible(timeout=60_000)
                label = {"tie": "Tie", "all_bad": "All bad"}.get(choice, f"{choice} is best")
                page.locator("#arena-vote").get_by_label(label, exact=True).check()
                page.locator("#arena-vote-submit").click()
                expect(page.locator("#arena-vote-status")).to_contain_text("Vote saved", timeout=30_000)
                expect(page.locator("#arena-status")).to_contain_text("Voted")  # the next run's line replaces it
                revealed = page.locator("#arena-cards .ta-card h3").all_inner_texts()
                assert sorted(title.split(" · ")[1] for title in revealed) == sorted(VARIANTS)  # names shown now
                expect(page.locator("#arena-vote-row")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "13-arena-vote-revealed.png"), full_page=True)

            votes = _votes(live_workspace)[before:]
            assert len(votes) == QUERIES and all(vote["blind"] for vote in votes)
            assert [vote["winner"] for vote in votes] == choices
            assert all({answer["variant"].split("@")[0] for answer in vote["answers"]} == set(VARIANTS)
                       for vote in votes)
            assert len({(vote["query"], vote["input"]) for vote in votes}) == QUERIES  # ten demo questions

            page.get_by_role("tab", name="Leaderboard").click()
            expect(page.locator("#lb-summary")).to_contain_text(re.compile(r"\d+ votes"), timeout=60_000)
            table = page.locator("#lb-table")
            expect(table).to_contain_text("zero_shot")
            expect(table).to_contain_text(re.compile(r"\d+ – \d+"))  # intervals
            expect(page.locator("#lb-agreement")).to_contain_text("ROUGE-L")
            page.locator("#lb-by").get_by_label(re.compile("each approach")).check()
            expect(table).to_contain_text("lora", timeout=30_000)  # the demo run's method
            page.locator("#lb-export").click()
            expect(page.locator("#lb-export-status")).to_contain_text("pairs from", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "14-leaderboard.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.integration
def test_twenty_votes_at_once_through_the_api_lose_nothing(live_app, live_workspace):
    from gradio_client import Client

    arena = {"query": "How many pod slots has the Orbit 3 garden?", "reference": "Twelve.", "task": "qa",
             "results": [{"variant": "zero_shot", "strategy": "zero_shot", "adapter": None, "available": True,
                          "answer": "It has twelve.", "prompt": "p1", "metrics": {"rougeL": 0.5}},
                         {"variant": "few_shot", "strategy": "few_shot", "adapter": None, "available": True,
                          "answer": "Eight slots.", "prompt": "p2", "metrics": {"rougeL": 0.0}}]}
    before = len(_votes(live_workspace))

    def send(number: int) -> str:
        client = Client(live_app, verbose=False)
        saved = client.predict({**arena, "query": f"{arena['query']} #{number}"}, "zero_shot",
                               ["zero_shot", "few_shot"], "", True, api_name="/vote")
        return saved["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(send, range(20)))
    votes = _votes(live_workspace)[before:]  # every line parses: none torn or interleaved
    assert len(votes) == 20 and sorted(vote["id"] for vote in votes) == sorted(ids) and len(set(ids)) == 20
    assert {vote["query"] for vote in votes} == {f"{arena['query']} #{number}" for number in range(20)}
