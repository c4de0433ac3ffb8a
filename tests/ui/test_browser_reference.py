"""The Arena's reference answer follows its query, in Debian's Chromium: a query typed by hand drops the demo
question's reference (no new answer is scored against an unrelated one); picking a demo question fills both again.
Nothing is generated."""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM, CHROMIUM_FLAGS

from core.data import demo_path, load_examples
from ui.arena import _examples


@pytest.mark.browser
@pytest.mark.integration
def test_a_typed_query_clears_the_reference_and_a_picked_question_fills_it(live_app):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    rows = load_examples(demo_path("test.jsonl")).examples
    first = rows[0]
    number = next(n for n, row in enumerate(rows) if n and row.task == "qa" and row.output != first.output)
    other, other_label = rows[number], {n: label for label, n in _examples()}[number]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(live_app)
            query, reference = page.locator("#arena-query textarea"), page.locator("#arena-reference textarea")

            # the first demo question, with its reference answer
            expect(query).to_have_value(first.instruction, timeout=60_000)
            expect(reference).to_have_value(first.output)

            # a query of one's own: the demo reference goes, the typing is left alone
            query.press("Control+End")
            query.press_sequentially(" Answer briefly.")
            expect(reference).to_have_value("", timeout=10_000)
            expect(query).to_have_value(first.instruction + " Answer briefly.")

            # a reference typed right after the query stays
            reference.press_sequentially("Fill it up.")
            page.wait_for_timeout(1000)
            expect(reference).to_have_value("Fill it up.")

            # another demo question: its query and its reference
            _pick(page, other_label)
            expect(query).to_have_value(other.instruction, timeout=10_000)
            expect(reference).to_have_value(other.output)

            # edited, then the same question picked again: filled again
            query.press("Control+End")
            query.press_sequentially("?")
            expect(reference).to_have_value("", timeout=10_000)
            _pick(page, other_label)
            expect(query).to_have_value(other.instruction, timeout=10_000)
            expect(reference).to_have_value(other.output)
        finally:
            browser.close()


def _pick(page, label: str) -> None:
    """Choose ``label`` in the Arena's "pick a demo test question" dropdown."""
    from playwright.sync_api import expect

    page.locator("#arena-pick input").click()
    option = page.get_by_role("option", name=label, exact=True)
    expect(option).to_have_count(1)
    option.click()
