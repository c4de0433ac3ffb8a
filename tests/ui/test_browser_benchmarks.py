"""The Benchmarks tab as a person uses it in Chromium: two bundled tasks on the base model and the demo run, 8
examples each, run; the result table with each run's change from the base and its interval; the JSON saved in the
workspace; the same table again after reopening it from the past results on a fresh page."""

from __future__ import annotations

import json
import re

import pytest
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS

from ui.bench_views import past_label

RUN = "demo-quick-lora"
TASKS = ("tune_arena_probe", "tune_arena_tickets")


@pytest.mark.browser
@pytest.mark.integration
def test_benchmark_the_demo_run_then_reopen_it_in_chromium(live_app, live_workspace):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    folder = live_workspace / "benchmarks"
    before = set(folder.glob("*.json")) if folder.is_dir() else set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(live_app)
            page.get_by_role("tab", name="Benchmarks").click()
            tasks = page.locator("#bench-tasks")
            for name in ("tune_arena_probe", "tune_arena_probe_mc", "tune_arena_knowledge", "tune_arena_tickets"):
                box = tasks.get_by_label(re.compile(rf"\({name}\)$"))
                box.check() if name in TASKS else box.uncheck()
            expect(page.locator("#bench-runs")).to_contain_text(RUN)  # the demo run, preselected
            limit = page.locator("#bench-limit input")
            limit.fill("8")
            limit.press("Tab")  # Gradio's number input commits its value on blur
            expect(limit).to_have_value("8")
            page.wait_for_timeout(300)
            page.locator("#bench-run").click()
            status = page.locator("#bench-status")
            expect(status).to_contain_text(re.compile(r"Model \d of 2|Checking"), timeout=60_000)  # streamed
            expect(status).to_contain_text("Done", timeout=300_000)
            table = page.locator("#bench-table")
            for text in (RUN, "tune_arena_probe", "tune_arena_tickets", "["):
                expect(table).to_contain_text(text)
            expect(page.locator("#bench-summary")).to_contain_text(f"{RUN}: tune_arena_probe")
            shown = table.inner_text()
            page.screenshot(path=str(ARTIFACTS / "15-benchmarks.png"), full_page=True)

            saved_files = sorted(set(folder.glob("*.json")) - before)
            assert len(saved_files) == 1, saved_files
            saved = json.loads(saved_files[0].read_text(encoding="utf-8"))
            assert list(saved["tasks"]) == list(TASKS)
            assert all(set(saved["tasks"][task]) == {"base", RUN} for task in TASKS)
            assert set(saved["deltas"][RUN]) == set(TASKS) and saved["config"]["limit"] == 8

            # a fresh page opens on what the app had at launch; the new result is reopened from the past results
            page.goto(live_app)
            page.get_by_role("tab", name="Benchmarks").click()
            page.wait_for_timeout(1000)  # the tab's refresh has listed the new result
            page.locator("#bench-past input").click()
            label = past_label({"id": saved["id"], "created": saved["created"], "tasks": list(saved["tasks"]),
                                "models": list(saved["models"])})
            page.get_by_role("option", name=label).click()
            expect(page.locator("#bench-summary")).to_contain_text(saved["id"], timeout=30_000)
            expect(table).to_contain_text(RUN)
            assert table.inner_text() == shown
        finally:
            browser.close()
