"""End to end in Debian's Chromium: the Arena answers with every variant, a training run starts, its loss chart
updates, and it stops; on first launch the Evaluate tab shows the demo evaluation's verdict and its report.html
opens. Screenshots of every tab go to tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from app_helpers import served_app
from verdict_helpers import install_eval

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.mark.browser
@pytest.mark.integration
def test_arena_then_training_in_chromium(live_app, live_workspace):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(live_app)

            # Arena: a demo question is filled in and the shipped demo adapter chosen; one click runs all five
            expect(page.locator("#arena-query textarea")).not_to_have_value("")
            page.locator("#arena-run").click()
            expect(page.locator("#arena-status")).to_contain_text("5 of 5 variants answered", timeout=300_000)
            cards = page.locator("#arena-cards .ta-card")
            expect(cards).to_have_count(5)
            for number in range(5):
                card = cards.nth(number)
                expect(card.locator(".ta-answer")).not_to_be_empty()
                expect(card.locator(".ta-chip", has_text="ROUGE-L")).to_have_count(1)
                expect(card.locator(".ta-chip", has_text="tokens")).to_have_count(1)
            titles = [cards.nth(n).locator("h3").inner_text() for n in range(5)]
            assert titles == ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]
            expect(page.locator("#arena-cards .ta-best").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "1-arena.png"), full_page=True)

            # Train: the quick-lora preset on the demo data, stopped after a few steps
            page.get_by_role("tab", name="Train").click()
            expect(page.locator("#train-data-info")).to_contain_text("389 examples")
            page.get_by_text("Training settings").click()  # the accordion with epochs, steps, learning rate…
            steps = page.locator("#train-max-steps input")
            expect(steps).to_be_visible()
            page.wait_for_timeout(500)  # the accordion has opened and its inputs are bound (a fill before is lost)
            steps.fill("40")
            steps.press("Tab")  # Gradio's number input commits its value on blur
            expect(steps).to_have_value("40")
            page.wait_for_timeout(300)
            page.locator("#train-start").click()
            progress = page.locator("#train-progress")
            expect(progress).to_contain_text(re.compile(r"step [2-9]\d*/40"), timeout=300_000)
            first = _step(progress.inner_text())
            drawn = _points(page.locator("#train-chart polyline.ta-train").get_attribute("points"))
            expect(progress).not_to_contain_text(f"step {first}/40", timeout=120_000)  # the bar moves…
            page.wait_for_timeout(1500)
            assert _points(page.locator("#train-chart polyline.ta-train").get_attribute("points")) > drawn  # …the curve
            expect(page.locator("#train-chart .ta-val-dot").first).to_be_visible()  # the first validation pass
            page.screenshot(path=str(ARTIFACTS / "2-train-running.png"), full_page=True)
            page.locator("#train-stop").click()
            expect(progress).to_contain_text("stopped", timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "3-train-stopped.png"), full_page=True)
            stopped = [p for p in (live_workspace / "runs").iterdir() if (p / "status.json").is_file()
                       and '"stopped"' in (p / "status.json").read_text()]
            assert len(stopped) >= 1

            # the stopped run is offered in the Arena's picker, and the other tabs render
            page.get_by_role("tab", name="Arena").click()
            page.locator("#arena-adapter input").click()
            expect(page.get_by_role("option").filter(has_text=stopped[0].name)).to_have_count(1)
            page.keyboard.press("Escape")
            for number, name in ((4, "Evaluate"), (5, "Knowledge base"), (6, "Runs")):
                page.get_by_role("tab", name=name).click()
                page.wait_for_timeout(1500)
                page.screenshot(path=str(ARTIFACTS / f"{number}-{name.lower().replace(' ', '-')}.png"),
                                full_page=True)
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.integration
def test_first_launch_shows_the_demo_verdict_and_its_report_in_chromium(bundled_home, tmp_path):
    """A fresh workspace: the Evaluate tab opens on the demo evaluation's verdict without any other click, and its
    report.html, downloaded through the app, opens in Chromium with the same verdict."""
    from playwright.sync_api import expect, sync_playwright

    from core.data import demo_path

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    workspace = tmp_path / "workspace"
    if not (demo_path("eval-demo") / "results.json").is_file():  # no shipped demo evaluation: one built here
        install_eval(workspace, "demo-eval")
    with served_app(bundled_home, workspace, tmp_path / "app.log") as url, sync_playwright() as playwright:
        saved = json.loads((workspace / "evals" / "demo-eval" / "results.json").read_text(encoding="utf-8"))
        sentences = [verdict["sentence"] for verdict in saved["verdict"].values()]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            page.goto(url)
            # the Arena (first tab, a qa question) shows the latest evaluation's qa verdict under its cards
            expect(page.locator("#arena-verdict .ta-verdict-sentence")).to_have_text(saved["verdict"]["qa"]["sentence"])
            page.get_by_role("tab", name="Evaluate").click()
            shown = page.locator("#eval-verdict .ta-verdict-sentence")
            expect(shown).to_have_count(len(sentences), timeout=60_000)
            expect(shown.first).to_have_text(sentences[0])
            expect(page.locator("#eval-status")).to_contain_text("demo-eval")
            page.screenshot(path=str(ARTIFACTS / "7-evaluate-first-launch.png"), full_page=True)

            with page.expect_download() as download:  # through the app's file route
                page.locator("#eval-report").click()
            assert download.value.suggested_filename == "report.html"
            report = tmp_path / "downloaded" / "report.html"  # Playwright keeps a download under a random name
            download.value.save_as(report)
            assert report.read_bytes() == (workspace / "evals" / "demo-eval" / "report.html").read_bytes()
            page.goto(report.as_uri())
            expect(page.locator(".ta-verdict-sentence")).to_have_count(len(sentences))
            expect(page.locator(".ta-verdict-sentence").first).to_have_text(sentences[0])
            chart = page.locator("img.ta-rep-chart")
            expect(chart).to_be_visible()
            assert chart.evaluate("image => image.naturalWidth") > 0  # the inline PNG decodes
            assert not re.search(r"<(script|link)\b", page.content())
            page.screenshot(path=str(ARTIFACTS / "8-report-html.png"), full_page=True)
        finally:
            browser.close()


def _points(attribute: str | None) -> int:
    return len((attribute or "").split())


def _step(text: str) -> int:
    return int(re.search(r"step (\d+)/", text).group(1))


@pytest.mark.browser
@pytest.mark.integration
def test_a_classification_head_trained_in_the_train_tab_answers_in_the_arena(live_app, live_workspace):
    """The sentiment-head preset (a label head on all-MiniLM-L6-v2) trains a few steps from the Train tab; picked in
    the Arena, its `finetuned` card answers with one of the demo's ticket labels and shows the class probabilities."""
    from playwright.sync_api import expect, sync_playwright

    from core.data import demo_path, load_examples

    labels = {json.loads(line)["output"] for line in demo_path("train.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip() and json.loads(line).get("task") == "classification"}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(live_app)
            page.get_by_role("tab", name="Train").click()
            page.locator("#train-preset input").click()
            page.get_by_role("option", name="sentiment-head", exact=True).click()
            expect(page.locator("#train-objective input")).to_have_value(re.compile("classification"))
            expect(page.locator("#train-text_column")).to_be_visible()  # the objective's own fields, and only them
            expect(page.locator("#train-teacher")).to_be_hidden()
            page.get_by_text("Training settings").click()
            steps = page.locator("#train-max-steps input")
            expect(steps).to_be_visible()
            page.wait_for_timeout(500)
            steps.fill("4")
            steps.press("Tab")
            expect(steps).to_have_value("4")
            page.wait_for_timeout(300)
            page.locator("#train-start").click()
            progress = page.locator("#train-progress")
            expect(progress).to_contain_text("completed", timeout=300_000)
            expect(progress).to_contain_text("step 4/4")
            run_id = progress.inner_text().split()[0]
            config = json.loads((live_workspace / "runs" / run_id / "config.json").read_text(encoding="utf-8"))
            assert config["objective"] == "classification" and config["base_model"] == "all-MiniLM-L6-v2"
            page.screenshot(path=str(ARTIFACTS / "9-train-head.png"), full_page=True)

            page.get_by_role("tab", name="Arena").click()
            page.locator("#arena-refresh").click()
            page.wait_for_timeout(1000)
            adapters = page.locator("#arena-adapter")
            clear = adapters.locator(".token-remove.remove-all")  # the demo adapter goes: this run alone
            if clear.count():
                clear.first.click()
            adapters.locator("input").click()
            page.get_by_role("option").filter(has_text=run_id).click()
            page.keyboard.press("Escape")
            for name in ("few_shot", "rag", "finetuned_rag"):
                page.locator("#arena-variants").get_by_label(name, exact=True).uncheck()
            ticket = next(example for example in load_examples(demo_path("test.jsonl")).examples
                          if example.task == "classification")
            page.locator("#arena-query textarea").fill(ticket.instruction)
            page.locator("#arena-input textarea").fill(ticket.input)
            page.locator("#arena-reference textarea").fill(ticket.output)
            page.locator("#arena-run").click()
            expect(page.locator("#arena-status")).to_contain_text(re.compile(r"(\d+) of \1 variants answered"),
                                                                  timeout=300_000)
            card = page.locator("#arena-cards .ta-card").filter(has=page.locator(".ta-probs"))
            expect(card).to_have_count(1)  # the head's card: its label and its top three classes
            expect(card.locator("h3")).to_contain_text("finetuned")
            expect(card.locator(".ta-probs li")).to_have_count(3)
            assert card.locator(".ta-answer").inner_text().strip() in labels
            page.screenshot(path=str(ARTIFACTS / "10-arena-head.png"), full_page=True)
        finally:
            browser.close()
