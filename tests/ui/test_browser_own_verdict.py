"""In Debian's Chromium, as a new user would: a test set made here is uploaded in the Evaluate tab, evaluated, and its
verdict shows in the page (#eval-verdict) with the same sentence results.json holds, its numbers under it, and the
slices table marking the best variant. A screenshot goes to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from app_helpers import served_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
VARIANTS = ("zero_shot", "few_shot", "nearest_answer")
TICKETS = {"billing": ["I was charged twice for my Orbit order.", "My invoice shows the wrong VAT number.",
                       "Please refund the extra shipping fee I paid.", "The card payment failed but money left.",
                       "Can I change the plan I am billed for?", "Why did my subscription price go up?"],
           "technical": ["The pump makes a rattling noise.", "My Hub shows E22 after a router change.",
                         "The lights stay off in the morning.", "The app cannot find my garden.",
                         "Water is not reaching the top tray.", "The sensor reads zero all the time."]}


@pytest.mark.browser
@pytest.mark.integration
def test_a_new_users_own_test_set_shows_its_verdict_in_chromium(bundled_home, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    rows = [{"task": "classification", "instruction": "Classify the message. Categories: billing, technical.",
             "input": text, "output": label} for label, texts in TICKETS.items() for text in texts]
    made = tmp_path / "my tickets.jsonl"
    made.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    workspace = tmp_path / "workspace"  # a fresh one: what a new user starts with
    with served_app(bundled_home, workspace, tmp_path / "app.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#eval-upload input[type=file]").set_input_files(str(made))
            expect(page.locator("#eval-data-info")).to_contain_text("12 rows", timeout=60_000)  # stored and picked
            expect(page.locator("#eval-data-info")).to_contain_text("my_tickets.jsonl")
            choices = page.locator("#eval-variants")
            for name in ("zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag", "finetuned_few_shot",
                         "nearest_answer"):
                box = choices.get_by_label(name, exact=True)
                box.check() if name in VARIANTS else box.uncheck()
            expect(page.locator("#eval-plan")).to_contain_text("(12 rows × 3 variants)")
            page.locator("#eval-run").click()

            shown = page.locator("#eval-verdict .ta-verdict-sentence")
            expect(shown).to_have_count(1, timeout=480_000)  # the demo's three cards give way to this set's one
            expect(shown).to_have_text(re.compile(r"^classification: .+; n = 12\.$"))
            expect(page.locator("#eval-status")).to_contain_text("my_tickets.jsonl")
            folders = [f for f in (workspace / "evals").iterdir() if f.name != "demo-eval"]
            assert len(folders) == 1
            saved = json.loads((folders[0] / "results.json").read_text(encoding="utf-8"))
            card = saved["verdict"]["classification"]
            assert shown.inner_text() == card["sentence"] and card["n"] == 12 and card["metric"] == "accuracy"
            assert card["winner"] in ("zero_shot", "few_shot")  # copying is a baseline, never the winner
            facts = page.locator("#eval-verdict .ta-verdict-facts")
            expect(facts).to_contain_text(f"Winner {card['winner']} accuracy")
            expect(facts).to_contain_text("Copying baseline nearest_answer")
            statuses = [leader["status"] for part in saved["slices"].values() for leader in part["leaders"].values()]
            if "win" in statuses:  # a slice's best is starred only when it is significantly above the next best
                expect(page.locator("#eval-details .ta-rep-best").first).to_contain_text("★")
            else:  # 12 rows: most often no variant is significantly above the next within a slice
                expect(page.locator("#eval-details")).to_contain_text(
                    re.compile(r"no significant difference between|too few rows to call|nothing to compare"))
            page.screenshot(path=str(ARTIFACTS / "9-evaluate-own-test-set.png"), full_page=True)
        finally:
            browser.close()
