"""report.html: one self-contained page per evaluation, with and without the verdict keys, every user text escaped."""

from __future__ import annotations

import html
import re

import pytest
from verdict_helpers import HOSTILE, SENTENCES, saved_eval

from core.arena.report import NO_VERDICT, fmt_ci, fmt_p, render_html, verdict_cards

URL = re.compile(r"https?://", re.IGNORECASE)


def _outside_escaped(page: str, *texts: str) -> str:
    """``page`` with the escaped forms of ``texts`` cut out: what is left was written by the report itself."""
    for text in texts:
        page = page.replace(html.escape(text), "")
    return page


def test_report_with_the_verdict_keys():
    saved = saved_eval()
    page = render_html(saved)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for sentence in SENTENCES.values():
        assert html.escape(sentence) in page
    # the sentence comes first in its card, then the numbers
    qa_card = page[page.index(html.escape(SENTENCES["qa"])):]
    assert qa_card.index("Winner <b>few_shot</b> rougeL 0.700 · runner-up <b>finetuned</b> 0.500") > 0
    assert "Margin +0.200 [+0.080, +0.330] (95% CI), p 0.004, Holm-adjusted p 0.012" in qa_card
    assert "Against zero-shot +0.500 [+0.400, +0.600], Holm-adjusted p 0.001" in page
    assert "Copying baseline <b>nearest_answer</b> 0.300: beaten by the winner" in page
    assert "Cheapest equivalent: <b>few_shot</b> (the winner itself: nothing cheaper is as good)" in page
    assert "ta-verdict-win" in page and "tie: no significant difference" in page
    for section in ("Knowledge vs behaviour", "Cost per variant", "Paired comparisons", "Every example", "Settings",
                    "Provenance"):
        assert f"<h2>{section}</h2>" in page
    assert "questions answered from the corpus (qa)" in page and "knowledge rougeL" in page
    assert "5m 12s" in page and "922K" in page and "9.8 MB" in page  # cost, formatted
    assert "mcnemar" in page and "permutation" in page
    assert "ab" * 32 in page and "torch 2.13.0" in page and "python -m core eval --data assets/demo/test.jsonl" in page
    assert "demo-quick-lora" in page and "<details class='ta-rep-example'>" in page
    assert page.count("<details class='ta-rep-example'>") == 6  # one collapsible block per example
    assert "src='data:image/png;base64," in page  # the charts, inline: one of all tasks, then one per task
    assert page.count("<img class='ta-rep-chart' alt='scores by variant (all)'") == 1
    for task in ("classification", "qa"):
        assert page.count(f"<img class='ta-rep-task-chart' alt='scores by variant ({task})'") == 1
    assert page.count("src='data:image/png;base64,") == 3


def test_report_escapes_user_text_and_links_to_nothing():
    saved = saved_eval()
    saved["provenance"]["data"] = "uploads/<img src=x onerror=alert(1)>.jsonl"
    page = render_html(saved)
    assert "<script>" not in page and "onerror=alert(1)>" not in page
    assert html.escape(HOSTILE) in page  # the answer, shown as text
    assert "What is &lt;b&gt;E15&lt;/b&gt;? &lt;/details&gt;&lt;script&gt;" in page
    assert not URL.search(_outside_escaped(page, HOSTILE))  # the only URL is the model's answer, escaped
    assert "<link" not in page and "<script" not in page and " src='http" not in page


def test_report_of_an_old_evaluation_without_the_new_keys():
    page = render_html(saved_eval(with_verdict=False))
    assert html.escape(NO_VERDICT) in page
    assert "<h2>Cost per variant</h2>" not in page and "<h2>Paired comparisons</h2>" not in page
    assert "<h2>Scores</h2>" in page and "<h2>Every example</h2>" in page
    assert "No provenance recorded" in page and not URL.search(_outside_escaped(page, HOSTILE))
    # the bare minimum: no rows, no summary
    assert html.escape(NO_VERDICT) in render_html({})


def test_verdict_cards_and_formatters():
    saved = saved_eval()
    assert verdict_cards(saved, ["qa"]).count("class='ta-verdict ") == 1
    assert NO_VERDICT in html.unescape(verdict_cards({"verdict": {"qa": "broken"}}))
    thin = {"verdict": {"qa": {"status": "thin", "sentence": "<i>close</i>", "winner": None, "ci": None}}}
    card = verdict_cards(thin)
    assert "thin: too few rows to call" in card and "&lt;i&gt;close&lt;/i&gt;" in card and "Winner" not in card
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.0123) == "0.012" and fmt_p(None) == "—"
    assert fmt_ci([-0.1, 0.25]) == "[-0.100, +0.250]" and fmt_ci(None) == "" and fmt_ci([1]) == ""


def test_report_renders_what_the_verdict_module_returns():
    """The keys as core.arena.verdict computes them (not hand-written): every card and table renders."""
    judge = pytest.importorskip("core.arena.verdict")
    rows = []
    for number in range(12):
        for variant, score in (("zero_shot", 0.1), ("few_shot", 0.6), ("finetuned", 0.58), ("nearest_answer", 0.3)):
            for task, metric in (("qa", "rougeL"), ("classification", "accuracy")):
                value = float(score > 0.5 and number % 4 != 0) if metric == "accuracy" else score + number / 100
                rows.append({"id": f"{task}{number}", "task": task, "variant": variant, "available": True,
                             "metrics": {metric: value}, "prompt_tokens": 50, "latency_s": 0.2, "new_tokens": 5,
                             "slice": "knowledge" if task == "qa" else "behaviour", "answer": "a",
                             "reference": "r", "instruction": "q"})
    comparisons = judge.compare(rows)
    cost = judge.cost_table(rows, {"finetuned": {"wall_s": 30.0, "trainable_params": 1000}})
    saved = {"rows": rows, "comparisons": comparisons, "cost": cost, "slices": judge.slices(rows, n_resamples=50),
             "verdict": judge.verdict(rows, comparisons, cost), "n": 24}
    page = render_html(saved)
    for verdict in saved["verdict"].values():
        assert html.escape(verdict["sentence"]) in page
    assert page.count("class='ta-verdict ta-verdict-") == 2
    assert "<h2>Knowledge vs behaviour</h2>" in page and "<h2>Paired comparisons</h2>" in page
    assert "Copying baseline <b>nearest_answer</b>" in page and "30 s" in page


# ---- the card's lines and the slice marks, on synthetic score tables (core.arena.verdict computes the numbers) -------


def _scored(task: str, table: dict[str, list[float]], metric: str = "rougeL",
            slice_of: list[str] | None = None) -> list[dict]:
    """One row per (example, variant): ``table`` variant -> one score per example."""
    return [{"id": f"{task}{i}", "task": task, "variant": variant, "available": True, "metrics": {metric: value},
             "prompt_tokens": 50, "latency_s": 0.2, "new_tokens": 5, **({"slice": slice_of[i]} if slice_of else {})}
            for variant, values in table.items() for i, value in enumerate(values)]


def _card(table: dict[str, list[float]]) -> tuple[dict, list[dict], str]:
    """(the qa verdict, the comparisons, its card's lines as text)."""
    from core.arena.report import verdict_facts
    from core.arena.verdict import compare, cost_table, verdict

    rows = _scored("qa", table)
    comparisons = compare(rows)
    found = verdict(rows, comparisons, cost_table(rows))["qa"]
    return found, comparisons, html.unescape(re.sub(r"<[^>]+>", "", "\n".join(verdict_facts(found))))


BASE = [0.3 + (0.1 if i % 3 == 0 else -0.05) for i in range(30)]  # the winner's scores (rag): mean 0.300


def _shifted(up: float, down: float) -> list[float]:
    """BASE moved up by ``up`` on odd rows and down by ``down`` on even ones: a difference no test can call."""
    return [x + (up if i % 2 else -down) for i, x in enumerate(BASE)]


def test_against_zero_shot_says_no_significant_difference_when_its_interval_crosses_0():
    found, _, text = _card({"rag": BASE, "zero_shot": _shifted(0.2, 0.22)})
    versus = found["vs_zero_shot"]
    assert found["winner"] == "rag" and versus["ci"][0] < 0 < versus["ci"][1]
    assert re.search(r"Against zero-shot \+0\.010 \[-0\.\d+, \+0\.\d+\], Holm-adjusted p [01]\.\d+: "
                     r"no significant difference$", text, re.MULTILINE), text
    found, _, text = _card({"rag": BASE, "zero_shot": [x - 0.2 for x in BASE]})
    assert found["vs_zero_shot"]["ci"][0] > 0
    assert "Against zero-shot +0.200 [+0.200, +0.200], Holm-adjusted p < 0.001: significant" in text


@pytest.mark.parametrize(("copying", "said"), [
    ([x - 0.1 for x in BASE], "0.200: beaten by the winner (winner − copying +0.100 [+0.100, +0.100]"),
    ([x + 0.1 for x in BASE], "0.400: does better: copying the nearest training answer scores 0.400 against the "
                              "winner's 0.300 (winner − copying -0.100 [-0.100, -0.100]"),
    (_shifted(0.2, 0.18), "0.310: not beaten: copying the nearest training answer scores higher (0.310 against the "
                          "winner's 0.300), no significant difference (winner − copying -0.010 ["),
    (_shifted(0.18, 0.2), "0.290: not beaten: copying the nearest training answer does as well, no significant "
                          "difference (winner − copying +0.010 ["),
])
def test_the_copying_line_says_what_the_pair_says(copying, said):
    found, comparisons, text = _card({"rag": BASE, "nearest_answer": copying})
    assert found["winner"] == "rag"  # copying is a baseline: never the winner, even when it scores higher
    assert f"Copying baseline nearest_answer {said}" in text, text
    # an evaluation saved before the verdict carried the pair's numbers: the card finds them in the comparisons
    from core.arena.report import verdict_facts

    old = {**found, "copying": {key: found["copying"][key] for key in ("variant", "mean", "beaten")}}
    again = html.unescape(re.sub(r"<[^>]+>", "", "\n".join(verdict_facts(old, comparisons))))
    assert again == text


def test_without_the_pairs_numbers_the_copying_line_claims_no_significance():
    from core.arena.report import verdict_facts

    found, _, _ = _card({"rag": BASE, "nearest_answer": _shifted(0.2, 0.18)})
    old = {**found, "copying": {key: found["copying"][key] for key in ("variant", "mean", "beaten")}}
    text = html.unescape(re.sub(r"<[^>]+>", "", "\n".join(verdict_facts(old))))
    assert "Copying baseline nearest_answer 0.310: not beaten: copying the nearest training answer scores 0.310 " \
           "against the winner's 0.300" in text and "significant" not in text.split("Copying")[1]


def test_the_slices_table_marks_the_best_variant_of_each_slice():
    from core.arena.report import slice_leaders, slices_table
    from core.arena.verdict import slices

    kinds = ["knowledge"] * 12 + ["behaviour"] * 12
    table = {"rag": [0.8] * 12 + [0.2] * 12, "finetuned": [0.3] * 12 + [0.7] * 12,
             "nearest_answer": [0.9] * 24, "zero_shot": [0.1] * 24}  # copying tops both: not marked
    saved = {"slices": slices(_scored("mixed", table, slice_of=kinds), n_resamples=50)}
    assert slice_leaders(saved) == {"knowledge": {"rougeL": "rag"}, "behaviour": {"rougeL": "finetuned"}}
    page = slices_table(saved)
    assert page.count("class='ta-rep-best'") == 2
    cells = {row.split("</b>")[0].rsplit(">", 1)[1]: row for row in page.split("<tr>")[2:]}
    assert "★ 0.800" in cells["rag"] and "★ 0.700" in cells["finetuned"] and "★" not in cells["nearest_answer"]
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert ("knowledge (12 examples): rougeL: ★ rag 0.800, significantly above finetuned 0.300 (+0.500 [+0.500, "
            "+0.500], Holm-adjusted p ") in text
    assert "behaviour (12 examples): rougeL: ★ finetuned 0.700, significantly above rag 0.200 (+0.500 [" in text
    tied = {"slices": slices(_scored("mixed", {"b": [0.5] * 24, "a": [0.5] * 24}, slice_of=kinds), n_resamples=50)}
    assert slice_leaders(tied) == {}  # a tie: no best variant, and the table says so
    text = html.unescape(re.sub(r"<[^>]+>", "", slices_table(tied)))
    assert "★" not in text.split("★ the best variant")[0]
    assert "knowledge (12 examples): rougeL: no significant difference between a 0.500 and b 0.500 (+0.000 " in text
    assert slice_leaders({"slices": {"knowledge": {"n": 3, "summary": {}}}}) == {} and slices_table({}) == ""
    # a slice saved before slices had comparisons: means only, no star, nothing called
    old = {"slices": {"knowledge": {"n": 3, "summary": {"rag": {"rougeL": {"mean": 0.8, "low": 0.7, "high": 0.9}},
                                                        "zero_shot": {"rougeL": {"mean": 0.1}}}}}}
    page = slices_table(old)
    assert slice_leaders(old) == {} and "class='ta-rep-best'" not in page
    assert "rougeL: no paired comparisons in this evaluation, no best variant called" in page


def test_a_pair_turned_around_shows_no_negative_zero():
    from core.arena.report import verdict_facts

    verdict = {"winner": "few_shot", "means": {"few_shot": 0.667}, "copying": {"variant": "nearest_answer",
                                                                                "mean": 0.75, "beaten": False}}
    pairs = [{"task": "c", "a": "nearest_answer", "b": "few_shot", "diff": 0.083, "ci": [0.0, 0.25], "p_holm": 1.0}]
    line = html.unescape(re.sub(r"<[^>]+>", "", verdict_facts(verdict, pairs)[-1]))
    assert "(winner − copying -0.083 [-0.250, +0.000], Holm-adjusted p 1.000)" in line and "-0.000" not in line
