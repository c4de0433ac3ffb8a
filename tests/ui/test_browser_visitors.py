"""Two visitors of one shared app (`TUNE_ARENA_MULTI_USER=1`, as on a public Space) in two Chromium contexts.

Alice uploads a document, builds an index from it and trains a run; a job over the CPU step quota is refused in one
line, and Bob's job waits in the queue behind hers (then he takes it out). Bob sees none of Alice's document, index,
run or evaluation: not in any tab, not through Gradio's file route by any spelling of the path, not through the API.
Bob's evaluations and Arena runs through the API that name Alice's run, index or uploaded file are refused in one
line. Both see the shared demo items. The sweep of stale workspaces is tested in tests/test_visitors.py.
"""

from __future__ import annotations

import re

import pytest
from app_helpers import served_app
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS
from verdict_helpers import install_eval

from core.data.demo import demo_path
from core.engine.visitors import Visitor
from ui.visitors import VISITOR_COOKIE

SECRET = "The zorblax launch moves to the lunar depot in May; only Alice knows the date."


def _cookie(context) -> str:
    return next(cookie["value"] for cookie in context.cookies() if cookie["name"] == VISITOR_COOKIE)


def _set_steps(page, steps: int) -> None:
    from playwright.sync_api import expect

    box = page.locator("#train-max-steps input")
    if not box.is_visible():
        page.get_by_text("Training settings").click()  # the accordion with epochs, steps, learning rate…
        expect(box).to_be_visible()
        page.wait_for_timeout(500)  # the accordion has opened and its inputs are bound (a fill before is lost)
    box.fill(str(steps))
    box.press("Tab")  # Gradio's number input commits its value on blur
    expect(box).to_have_value(str(steps))
    page.wait_for_timeout(300)


def _refused(call, *args, leaks: tuple[str, ...] = ()) -> str:
    """The one-line message ``call(*args)`` (an API call) is refused with; none of ``leaks`` in it."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        call(*args)
    message = str(refused.value).strip()
    assert message and "\n" not in message, message
    assert not any(leak in message for leak in leaks), message
    return message


def _options(page, picker: str) -> str:
    """The text of every option a dropdown offers (opened, read, closed)."""
    page.locator(f"{picker} input").click()
    page.wait_for_timeout(500)
    text = " | ".join(page.get_by_role("option").all_inner_texts())
    page.keyboard.press("Escape")
    return text


@pytest.mark.browser
@pytest.mark.integration
def test_two_visitors_keep_their_work_apart_in_chromium(bundled_home, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    workspace = tmp_path / "workspace"
    document = tmp_path / "zorblax-plans.md"
    document.write_text(f"# Zorblax plans\n\n{SECRET}\n", encoding="utf-8")
    env = {"TUNE_ARENA_MULTI_USER": "1", "TUNE_ARENA_CPU_MAX_STEPS": "5"}
    with served_app(bundled_home, workspace, tmp_path / "app.log", env=env) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            alice_context = browser.new_context(viewport={"width": 1440, "height": 1000})
            bob_context = browser.new_context(viewport={"width": 1440, "height": 1000})
            alice, bob = alice_context.new_page(), bob_context.new_page()
            for page in (alice, bob):
                page.goto(url)
                expect(page.locator("#visitor-info")).to_contain_text("private to this browser", timeout=60_000)
            alice_home = workspace / "visitors" / Visitor.anonymous(_cookie(alice_context)).key
            bob_home = workspace / "visitors" / Visitor.anonymous(_cookie(bob_context)).key
            assert alice_home != bob_home

            # Alice: a document uploaded and indexed in the Knowledge tab
            alice.get_by_role("tab", name="Knowledge base").click()
            alice.locator("#kb-files input[type=file]").set_input_files(str(document))
            name = alice.locator("#kb-name").locator("input, textarea").first
            name.fill("alice-secrets")
            name.press("Tab")
            alice.wait_for_timeout(500)
            alice.locator("#kb-build").click()
            expect(alice.locator("#kb-build-status")).to_contain_text("Built", timeout=240_000)
            stored = alice_home / "uploads" / "documents" / document.name
            manifest = alice_home / "indexes" / "alice-secrets" / "manifest.json"
            assert stored.is_file() and manifest.is_file()

            # Alice: a job over the CPU instance's step quota is refused in one line; a short one starts
            alice.get_by_role("tab", name="Train").click()
            _set_steps(alice, 50)
            alice.locator("#train-start").click()
            expect(alice.get_by_text("50 is over the 5 steps a training job may take")).to_be_visible(timeout=60_000)
            _set_steps(alice, 3)
            alice.locator("#train-start").click()
            alice_progress = alice.locator("#train-progress")
            expect(alice_progress).to_contain_text(re.compile("preparing|running"), timeout=60_000)

            # Bob: his job waits its turn, and says so; Stop takes it out of the queue
            bob.get_by_role("tab", name="Train").click()
            _set_steps(bob, 2)
            bob.locator("#train-start").click()
            bob_progress = bob.locator("#train-progress")
            expect(bob_progress).to_contain_text("starts after 1 other job", timeout=30_000)
            bob.screenshot(path=str(ARTIFACTS / "10-visitor-queued.png"), full_page=True)
            bob.locator("#train-stop").click()
            expect(bob_progress).to_contain_text("cancelled", timeout=30_000)
            expect(alice_progress).to_contain_text("completed", timeout=300_000)
            alice_run = alice_progress.inner_text().split()[0]
            assert (alice_home / "runs" / alice_run / "config.json").is_file()
            assert not (bob_home / "runs").is_dir() or not any((bob_home / "runs").iterdir())
            alice_eval = install_eval(alice_home, "alice-eval")  # an evaluation of Alice's (made on disk: faster)

            # Alice sees her own work
            alice.reload()
            expect(alice.locator("#visitor-info")).to_contain_text("private to this browser", timeout=60_000)
            alice.get_by_role("tab", name="Arena").click()
            alice.wait_for_timeout(1000)
            offered = _options(alice, "#arena-adapter")  # her own, and the shared demo items beside them
            assert alice_run in offered and "demo-quick-lora" in offered
            offered = _options(alice, "#arena-index")
            assert "alice-secrets" in offered and "demo corpus" in offered
            alice.get_by_role("tab", name="Evaluate").click()
            alice.wait_for_timeout(1000)
            offered = _options(alice, "#eval-past")
            assert "alice-eval" in offered and "demo-eval" in offered

            # Bob sees the shared demo items and nothing of Alice's, in every tab (after a reload too)
            bob.reload()
            expect(bob.locator("#visitor-info")).to_contain_text("private to this browser", timeout=60_000)
            bob.get_by_role("tab", name="Arena").click()
            bob.wait_for_timeout(1000)
            offered = _options(bob, "#arena-adapter")
            assert "demo-quick-lora" in offered and alice_run not in offered
            offered = _options(bob, "#arena-index")
            assert "demo corpus" in offered and "alice-secrets" not in offered
            bob.get_by_role("tab", name="Evaluate").click()
            bob.wait_for_timeout(1000)
            offered = _options(bob, "#eval-past")
            assert "demo-eval" in offered and "alice-eval" not in offered
            assert "zorblax" not in _options(bob, "#eval-data")
            bob.get_by_role("tab", name="Knowledge base").click()
            bob.wait_for_timeout(1000)
            assert "alice-secrets" not in _options(bob, "#kb-picker")
            expect(bob.locator("#kb-indexes")).not_to_contain_text("alice-secrets")
            bob.get_by_role("tab", name="Runs").click()
            bob.locator("#runs-refresh").click()
            expect(bob.locator("#runs-table")).to_contain_text("demo-quick-lora", timeout=30_000)
            expect(bob.locator("#runs-table")).not_to_contain_text(alice_run)
            bob.screenshot(path=str(ARTIFACTS / "11-visitor-bob-runs.png"), full_page=True)

            # Gradio's file route: none of Alice's files for Bob (or for a request with no cookie), whatever the
            # spelling of the path; hers for her; the instance's own files for no one
            alice_files = [stored, manifest, alice_home / "runs" / alice_run / "config.json",
                           alice_eval / "results.json"]
            for path in alice_files:
                text = str(path)
                spellings = [text, text.replace("/visitors/", "/visitors/./"),
                             text.replace(f"/visitors/{alice_home.name}/",
                                          f"/visitors/{bob_home.name}/../{alice_home.name}/"),
                             text.replace("/visitors/", "//visitors//")]
                for spelling in spellings:
                    for route in ("gradio_api/file=", "file="):
                        answer = bob_context.request.get(url + route + spelling)
                        assert answer.status in (403, 404) and "zorblax" not in answer.text(), (route, spelling)
                        anonymous = playwright.request.new_context()
                        assert anonymous.get(url + route + spelling).status in (403, 404)
                        anonymous.dispose()
            own = alice_context.request.get(url + "gradio_api/file=" + str(stored))
            assert own.status == 200 and "zorblax" in own.text()
            assert bob_context.request.get(url + "gradio_api/file=" + str(workspace / "indexes" / "demo" /
                                                                         "manifest.json")).status in (403, 404)

            # the API, as Bob (his cookie): Alice's index, evaluation and run are not his to use
            client = Client(url, verbose=False, headers={"Cookie": f"{VISITOR_COOKIE}={_cookie(bob_context)}"})
            for index in ("alice-secrets", str(manifest.parent)):
                with pytest.raises(AppError) as refused:
                    client.predict(index, "zorblax launch", 3, True, False, 0.5, api_name="/search_index")
                assert "zorblax launch moves" not in str(refused.value)
            with pytest.raises(AppError, match="No saved evaluation"):
                client.predict(str(alice_eval), api_name="/open_eval")
            listed = client.predict(None, api_name="/list_runs")
            assert alice_run not in str(listed) and "demo-quick-lora" in str(listed)

            # the API, as Bob: no evaluation or Arena run with Alice's run, index or uploaded file; each refused in
            # one line before anything runs, and nothing of hers in what comes back
            leaks = ("lunar depot", "only Alice knows")
            test_set = str(demo_path("test.jsonl"))
            run_folder = str(alice_home / "runs" / alice_run)

            def evaluate(data: str, variants: list[str], adapters: list[str], index: str):
                return client.predict(data, [], 1, variants, adapters, index, 0, 3, 16, api_name="/evaluate")

            def arena(variants: list[str], adapters: list[str], index: str):
                return client.predict("When does the zorblax launch move?", "", "", "", variants, adapters, index, 0,
                                      3, 16, 0.0, api_name="/arena")

            for run in (alice_run, run_folder):  # not among the runs Bob is offered
                assert "not in the list of choices" in _refused(evaluate, test_set, ["finetuned"], [run], "demo",
                                                                leaks=leaks)
                assert "not in the list of choices" in _refused(arena, ["finetuned"], [run], "demo", leaks=leaks)
            for index in ("alice-secrets", str(manifest.parent)):
                assert "not in the list of choices" in _refused(arena, ["rag"], [], index, leaks=leaks)
            assert "not a folder of this workspace's indexes" in _refused(evaluate, test_set, ["rag"], [],
                                                                          str(manifest.parent), leaks=leaks)
            assert "is not on offer" in _refused(evaluate, str(stored), ["zero_shot"], [], "demo", leaks=leaks)
            try:  # her index by its name is looked up among Bob's own: there is none by that name
                answer = str(evaluate(test_set, ["rag"], [], "alice-secrets"))
            except AppError as err:
                answer = str(err)
            assert not any(leak in answer for leak in leaks) and alice_home.name not in answer
            saved = [path.read_text(errors="replace") for path in (bob_home / "evals").rglob("*") if path.is_file()]
            assert not any(leak in text or alice_home.name in text for text in saved for leak in leaks)
            assert {path.name for path in (alice_home / "evals").iterdir()} == {"alice-eval"}  # nothing added to hers
        finally:
            browser.close()
