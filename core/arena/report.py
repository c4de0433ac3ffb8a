"""An evaluation as one self-contained HTML page (report.html beside results.json): the verdict per task, the
scores (a chart of all tasks, then one per task), the knowledge vs behaviour slices, the cost per variant, the paired
comparisons, every example's answers, the settings and the provenance. Inline CSS, charts as base64 PNG
(core.charts): no external URL, so it opens offline and can be mailed around. Every text that came from a user or a
model is HTML-escaped.

Reads the results.json dict only (core.arena.evals.load_eval); an old one without ``verdict``, ``slices``, ``cost``,
``comparisons`` or ``provenance`` renders with "no verdict in this evaluation" and without those sections.
The builders of the verdict cards and the tables are public: the app's Evaluate and Arena tabs show the same ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from core.arena.verdict import ALPHA, THIN_N
from core.charts import eval_chart_png
from core.text import fmt_bytes, fmt_count, fmt_duration

NO_VERDICT = "No verdict in this evaluation (it was saved before verdicts were computed)."
STATUS_LABELS = {"win": "winner (significant)", "tie": "tie: no significant difference",
                 "thin": "thin: too few rows to call", "single": "one variant: nothing to compare"}
METRICS = ("rougeL", "token_f1", "accuracy", "contains", "similarity", "bleu")  # the order columns appear in
NONE = "—"


def _e(value: Any) -> str:
    return escape(str(value if value is not None else ""))


def fmt_score(value: Any, digits: int = 3, *, signed: bool = False) -> str:
    """A score (or a difference, ``signed``) to ``digits`` places; a dash when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_ci(ci: Any, digits: int = 3) -> str:
    """``[lo, hi]`` of a two-number list; empty when unknown."""
    if not isinstance(ci, list | tuple) or len(ci) != 2 or not all(isinstance(v, int | float) for v in ci):
        return ""
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_p(p: Any) -> str:
    """``0.012``, ``< 0.001``; a dash when unknown."""
    if not isinstance(p, int | float):
        return NONE
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "ta-rep-table") -> str:
    """An HTML table (no header row when ``headers`` is empty); cells are already-escaped HTML."""
    head = f"<thead><tr>{''.join(f'<th>{_e(h)}</th>' for h in headers)}</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table class='{css}'>{head}<tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------------------------------------
# The verdict, the slices, the cost and the comparisons (HTML fragments the app shows too)
# --------------------------------------------------------------------------------------------------------------------


def _called(pair: Any) -> bool | None:
    """Whether a comparison dict (``ci``, ``p_holm``) calls a difference (Holm-adjusted p < ALPHA and the CI excludes
    0); None when it lacks the numbers."""
    if not isinstance(pair, dict) or not fmt_ci(pair.get("ci")) or not isinstance(pair.get("p_holm"), int | float):
        return None
    low, high = pair["ci"]
    return pair["p_holm"] < ALPHA and (low > 0 or high < 0)


def _copying_pair(verdict: dict[str, Any], comparisons: Sequence[Any]) -> dict[str, Any] | None:
    """The winner against the copying baseline (``diff`` = winner - copying, ``ci``, ``p_holm``): from the verdict's
    ``copying`` when it has them, else from ``comparisons`` (an evaluation saved before they were in the verdict)."""
    copying, winner = verdict.get("copying") or {}, verdict.get("winner")
    if _called(copying) is not None:
        return copying
    for pair in comparisons:
        if not isinstance(pair, dict) or _called(pair) is None or not isinstance(pair.get("diff"), int | float):
            continue
        if (pair.get("a"), pair.get("b")) == (winner, copying.get("variant")):
            return pair
        if (pair.get("a"), pair.get("b")) == (copying.get("variant"), winner):
            low, high = pair["ci"]
            return {**pair, "diff": -pair["diff"] + 0.0, "ci": [-high + 0.0, -low + 0.0]}  # + 0.0: no "-0.000"
    return None


def _copying_fact(verdict: dict[str, Any], comparisons: Sequence[Any]) -> str:
    """The copying baseline's line: beaten by the winner, does better (significantly), or scores higher / does as
    well with no significant difference; the numbers when known."""
    copying = verdict["copying"]
    mean = copying.get("mean")
    winner_mean = (verdict.get("means") or {}).get(verdict.get("winner"), verdict.get("winner_mean"))
    pair = _copying_pair(verdict, comparisons)
    called = _called(pair)
    numbers = (f" (winner − copying {fmt_score(pair.get('diff'), signed=True)} {fmt_ci(pair.get('ci'))}, "
               f"Holm-adjusted p {_e(fmt_p(pair.get('p_holm')))})" if pair is not None else "")
    versus = f"{fmt_score(mean)} against the winner's {fmt_score(winner_mean)}"
    higher = isinstance(mean, int | float) and isinstance(winner_mean, int | float) and mean > winner_mean
    if called is None:  # no numbers to judge by: the verdict's own flag, and the means
        line = ("beaten by the winner" if copying.get("beaten") else
                f"<b>not beaten</b>: copying the nearest training answer scores {versus}" if higher else
                "<b>not beaten</b>: the winner is not significantly better than copying the nearest training answer")
    elif called and pair["diff"] > 0:
        line = f"beaten by the winner{numbers}"
    elif called:
        line = f"<b>does better</b>: copying the nearest training answer scores {versus}{numbers}"
    elif higher:
        line = (f"<b>not beaten</b>: copying the nearest training answer scores higher ({versus}), no significant "
                f"difference{numbers}")
    else:
        line = ("<b>not beaten</b>: copying the nearest training answer does as well, no significant "
                f"difference{numbers}")
    return f"Copying baseline <b>{_e(copying.get('variant'))}</b> {fmt_score(mean)}: {line}"


def verdict_facts(verdict: dict[str, Any], comparisons: Sequence[Any] = ()) -> list[str]:
    """The numbers under a verdict's sentence, one HTML line each (escaped). ``comparisons``: the evaluation's, for
    the copying line of one saved before the verdict carried its numbers."""
    facts = []
    metric = _e(verdict.get("metric") or "score")
    if verdict.get("winner"):
        line = f"Winner <b>{_e(verdict['winner'])}</b> {metric} {fmt_score(verdict.get('winner_mean'))}"
        if verdict.get("runner_up"):
            line += f" · runner-up <b>{_e(verdict['runner_up'])}</b> {fmt_score(verdict.get('runner_up_mean'))}"
        facts.append(line)
    if verdict.get("margin") is not None:
        facts.append(f"Margin {fmt_score(verdict['margin'], signed=True)} {fmt_ci(verdict.get('ci'))} (95% CI), "
                     f"p {_e(fmt_p(verdict.get('p')))}, Holm-adjusted p {_e(fmt_p(verdict.get('p_holm')))}")
    versus = verdict.get("vs_zero_shot")
    if isinstance(versus, dict):
        called = _called(versus)
        said = {True: ": significant", False: ": no significant difference", None: ""}[called]
        facts.append(f"Against zero-shot {fmt_score(versus.get('diff'), signed=True)} {fmt_ci(versus.get('ci'))}, "
                     f"Holm-adjusted p {_e(fmt_p(versus.get('p_holm')))}{said}")
    cheapest = verdict.get("cheapest_equivalent")
    if cheapest:
        why = ("the winner itself: nothing cheaper is as good" if cheapest == verdict.get("winner")
               else "not significantly worse than the winner, and cheaper")
        facts.append(f"Cheapest equivalent: <b>{_e(cheapest)}</b> ({why})")
    if isinstance(verdict.get("copying"), dict):
        facts.append(_copying_fact(verdict, comparisons))
    return facts


def verdict_card(task: str, verdict: dict[str, Any], comparisons: Sequence[Any] = ()) -> str:
    """One task's verdict: the sentence first (big), the status, then the numbers (``comparisons``: see
    verdict_facts)."""
    status = str(verdict.get("status") or "")
    label = STATUS_LABELS.get(status, status)
    n = verdict.get("n")
    facts = "".join(f"<li>{fact}</li>" for fact in verdict_facts(verdict, comparisons))
    return (f"<div class='ta-verdict ta-verdict-{_e(status)}'>"
            f"<div class='ta-verdict-head'><span class='ta-rep-chip'>{_e(task)}</span>"
            f"<span class='ta-verdict-status'>{_e(label)}</span>"
            f"<span class='ta-verdict-n'>{_e(verdict.get('metric') or '')}"
            f"{f' · {n} examples' if isinstance(n, int) else ''}</span></div>"
            f"<p class='ta-verdict-sentence'>{_e(verdict.get('sentence') or NONE)}</p>"
            f"<ul class='ta-verdict-facts'>{facts}</ul></div>")


def verdict_cards(saved: dict[str, Any], tasks: Sequence[str] | None = None) -> str:
    """Every task's verdict card (or only ``tasks``); NO_VERDICT in a paragraph when the evaluation has none."""
    verdicts = saved.get("verdict") if isinstance(saved.get("verdict"), dict) else {}
    chosen = [task for task in verdicts if isinstance(verdicts[task], dict) and (tasks is None or task in tasks)]
    if not chosen:
        return f"<p class='ta-verdict-none'>{_e(NO_VERDICT)}</p>"
    pairs = [pair for pair in saved.get("comparisons") or [] if isinstance(pair, dict)]
    return ("<div class='ta-verdicts'>" + "".join(verdict_card(t, verdicts[t], [p for p in pairs if p.get("task") == t])
                                                 for t in chosen) + "</div>")


def _metrics_of(summaries: Sequence[dict[str, Any]]) -> list[str]:
    found = {metric for summary in summaries for stats in summary.values() for metric in stats}
    return [metric for metric in METRICS if metric in found]


def _cell(stats: Any) -> str:
    if not isinstance(stats, dict) or stats.get("mean") is None:
        return NONE
    interval = (f" <small>[{fmt_score(stats.get('low'))}, {fmt_score(stats.get('high'))}]</small>"
                if stats.get("low") is not None and stats.get("high") is not None else "")
    return fmt_score(stats["mean"]) + interval


def _mean_of(part: dict[str, Any], variant: str, metric: str) -> float | None:
    stats = ((part.get("summary") or {}).get(variant) or {}).get(metric)
    mean = stats.get("mean") if isinstance(stats, dict) else None
    return mean if isinstance(mean, int | float) and not isinstance(mean, bool) else None


def _leader_of(part: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The slice's saved leader on ``metric`` (core.arena.verdict.slices' ``leaders``); None when it has none."""
    leader = (part.get("leaders") or {}).get(metric) if isinstance(part.get("leaders"), dict) else None
    return leader if isinstance(leader, dict) and leader.get("variant") else None


def slice_leaders(saved: dict[str, Any], metrics: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """slice -> metric -> the variant that leads the slice with a significant difference: its saved leader (the
    highest mean, baselines that generate nothing aside, as they are never a verdict's winner) when its
    Holm-adjusted pair against the next best variant is significant (status "win"); a tie, thin data or a slice
    saved without comparisons has none."""
    slices = {name: part for name, part in (saved.get("slices") or {}).items() if isinstance(part, dict)}
    leaders: dict[str, dict[str, str]] = {}
    for name, part in slices.items():
        found = metrics if metrics is not None else _metrics_of([part.get("summary") or {}])
        for metric in found:
            leader = _leader_of(part, metric)
            if leader is not None and leader.get("status") == "win" and _called(leader):
                leaders.setdefault(name, {})[metric] = str(leader["variant"])
    return leaders


def _leader_note(part: dict[str, Any], metric: str) -> str:
    """What a slice says on ``metric``: its significant leader with the pair's numbers, or no significant difference
    (a tie), too few rows, one variant, or no paired comparisons (an evaluation saved before them)."""
    leader = _leader_of(part, metric)
    if leader is None:
        return f"{_e(metric)}: no paired comparisons in this evaluation, no best variant called"
    best = f"<b>{_e(leader['variant'])}</b> {fmt_score(leader.get('mean'))}"
    if leader.get("runner_up") is None:
        return f"{_e(metric)}: only {best} was scored, nothing to compare it with"
    other = f"<b>{_e(leader['runner_up'])}</b> {fmt_score(leader.get('runner_up_mean'))}"
    numbers = (f" ({fmt_score(leader.get('diff'), signed=True)} {fmt_ci(leader.get('ci'))}, Holm-adjusted p "
               f"{_e(fmt_p(leader.get('p_holm')))}, n = {_e(leader.get('n'))})" if _called(leader) is not None else "")
    status = leader.get("status")
    if status == "win" and _called(leader):
        return f"{_e(metric)}: ★ {best}, significantly above {other}{numbers}"
    if status == "thin":
        return f"{_e(metric)}: too few rows to call: {best} vs {other}{numbers}"
    return f"{_e(metric)}: no significant difference between {best} and {other}{numbers}"


def slices_table(saved: dict[str, Any]) -> str:
    """Knowledge vs behaviour: per variant, the mean [95% CI] of each metric on each slice; ★ marks a slice's best
    variant on a metric only when it is significantly better than the next best (slice_leaders); under the table,
    per slice and metric, the leader with its pair's numbers or "no significant difference"; empty without slices."""
    slices = {name: part for name, part in (saved.get("slices") or {}).items() if isinstance(part, dict)}
    if not slices:
        return ""
    metrics = _metrics_of([part.get("summary") or {} for part in slices.values()])[:3]
    variants = list(dict.fromkeys(v for part in slices.values() for v in part.get("summary") or {}))
    leaders = slice_leaders(saved, metrics)

    def cell(name: str, part: dict[str, Any], variant: str, metric: str) -> str:
        shown = _cell(((part.get("summary") or {}).get(variant) or {}).get(metric))
        best = leaders.get(name, {}).get(metric) == variant
        return (f"<b class='ta-rep-best' title='best of this slice, significantly'>★ {shown}</b>" if best
                else shown)

    headers = ["variant", *(f"{name} {metric}" for name in slices for metric in metrics)]
    rows = [[f"<b>{_e(variant)}</b>", *(cell(name, part, variant, metric) for name, part in slices.items()
                                        for metric in metrics)] for variant in variants]
    notes = []
    for name, part in slices.items():
        scored = [metric for metric in metrics if any(metric in stats for stats in (part.get("summary") or {}).values()
                                                      if isinstance(stats, dict))]
        said = "; ".join(_leader_note(part, metric) for metric in scored)
        notes.append(f"<li class='ta-slice-best'><b>{_e(name)}</b> ({_e(part.get('n', '?'))} examples): "
                     f"{said or NONE}</li>")
    said = list(dict.fromkeys(str(part.get("rule")) for part in slices.values() if part.get("rule")))
    rules = (f"<li>The rule: {_e(said[0])}</li>" if len(said) == 1 else
             "".join(f"<li><b>{_e(name)}</b>: {_e(part.get('rule') or '')}</li>" for name, part in slices.items()))
    legend = (f"<li>★ the best variant of the slice on that metric, marked only when it is significantly better than "
              f"the next best: paired test on the slice's examples, Holm-adjusted p &lt; {ALPHA} within the slice, "
              f"95% CI of the difference excluding 0, n ≥ {THIN_N} (the copying baseline aside, as it never wins a "
              "verdict); otherwise the slice has no significant difference</li>")
    return _table(headers, rows) + f"<ul class='ta-rep-notes'>{''.join(notes)}{legend}{rules}</ul>"


COST_COLUMNS = (("prompt_tokens", "prompt tokens", lambda v: f"{v:.0f}"), ("new_tokens", "new tokens",
                lambda v: f"{v:.0f}"), ("latency_s", "latency", lambda v: f"{v:.2f} s"),
                ("train_wall_s", "training time", fmt_duration), ("trainable_params", "trainable params", fmt_count),
                ("adapter_bytes", "weights", fmt_bytes), ("peak_mem_bytes", "peak memory", fmt_bytes),
                ("index_build_s", "index build", fmt_duration))


def cost_table(saved: dict[str, Any]) -> str:
    """What each variant costs: prompt and answer tokens, latency, training, weights, memory, index; empty without."""
    cost = {variant: facts for variant, facts in (saved.get("cost") or {}).items() if isinstance(facts, dict)}
    if not cost:
        return ""
    rows = []
    for variant, facts in cost.items():
        cells = [_e(fmt(facts[key])) if isinstance(facts.get(key), int | float) else NONE
                 for key, _, fmt in COST_COLUMNS]
        uses = [word for word, key in (("training", "training"), ("retrieval", "retrieval")) if facts.get(key)]
        rows.append([f"<b>{_e(variant)}</b>", *cells, _e(", ".join(uses) or "prompt only")])
    return _table(["variant", *(label for _, label, _ in COST_COLUMNS), "needs"], rows)


def comparisons_table(saved: dict[str, Any]) -> str:
    """Every paired comparison: a vs b on one task, the difference with its CI, raw and Holm-adjusted p."""
    pairs = [pair for pair in saved.get("comparisons") or [] if isinstance(pair, dict)]
    if not pairs:
        return ""
    rows = [[_e(pair.get("task")), _e(pair.get("metric")),
             f"<b>{_e(pair.get('a'))}</b> {fmt_score(pair.get('mean_a'))}",
             f"<b>{_e(pair.get('b'))}</b> {fmt_score(pair.get('mean_b'))}",
             f"{fmt_score(pair.get('diff'), signed=True)} {fmt_ci(pair.get('ci'))}", _e(fmt_p(pair.get("p"))),
             _e(fmt_p(pair.get("p_holm"))), _e(pair.get("n")), _e(pair.get("test")),
             "<b>yes</b>" if pair.get("significant") else "no"] for pair in pairs]
    return _table(["task", "metric", "a", "b", "a − b [95% CI]", "p", "p (Holm)", "n", "test", "significant"], rows)


def summary_table(saved: dict[str, Any]) -> str:
    """Per task ("all" first) and variant: the mean [95% bootstrap CI] of each headline metric."""
    by_task = saved.get("by_task") or {}
    metrics = [m for m in METRICS if any(m in stats for tasks in by_task.values() for stats in tasks.values())]
    tasks = sorted({task for tasks in by_task.values() for task in tasks}, key=lambda t: (t != "all", t))
    rows = [[_e(task), f"<b>{_e(variant)}</b>", *(_cell(by_task[variant][task].get(m)) for m in metrics)]
            for task in tasks for variant in by_task if task in by_task[variant]]
    return _table(["task", "variant", *metrics], rows) if rows else ""


# --------------------------------------------------------------------------------------------------------------------
# Examples, settings, provenance
# --------------------------------------------------------------------------------------------------------------------


def examples_section(rows: Sequence[dict[str, Any]]) -> str:
    """One collapsible block per example: question, input, reference, then every variant's answer and scores."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row.get("id")), []).append(row)
    blocks = []
    for uid, group in grouped.items():
        first = group[0]
        question = " ".join(str(first.get("instruction") or "").split())
        answers = []
        for row in group:
            if not row.get("available", True):
                answers.append([f"<b>{_e(row.get('variant'))}</b>", f"<i>unavailable: {_e(row.get('error'))}</i>", ""])
                continue
            scores = ", ".join(f"{_e(m)} {fmt_score(v, 2)}" for m, v in (row.get("metrics") or {}).items()
                               if m in METRICS and isinstance(v, int | float))
            answers.append([f"<b>{_e(row.get('variant'))}</b>", f"<div class='ta-rep-text'>{_e(row.get('answer'))}"
                            "</div>", scores])
        extra = (f"<p><b>Input</b></p><div class='ta-rep-text'>{_e(first['input'])}</div>"
                 if first.get("input") else "")
        table = _table(["variant", "answer", "scores"], answers)
        blocks.append(f"<details class='ta-rep-example'><summary><code>{_e(uid)}</code> · {_e(first.get('task'))} · "
                      f"{_e(question[:120])}</summary><p><b>Question</b></p><div class='ta-rep-text'>"
                      f"{_e(first.get('instruction'))}</div>{extra}<p><b>Reference</b></p><div class='ta-rep-text "
                      f"ta-rep-ref'>{_e(first.get('reference'))}</div>{table}</details>")
    return "".join(blocks) or "<p>No examples.</p>"


def _pre(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def provenance_section(saved: dict[str, Any]) -> str:
    """Where the numbers came from: data and corpus hashes, runs, seed, package versions, the reproducing command."""
    found = saved.get("provenance")
    if not isinstance(found, dict):
        return f"<p>Data: <code>{_e(saved.get('data'))}</code>. No provenance recorded in this evaluation.</p>"
    index = found.get("index") if isinstance(found.get("index"), dict) else None
    facts = [("data", f"<code>{_e(found.get('data'))}</code>"), ("data sha256", f"<code>{_e(found.get('data_sha256'))}"
             "</code>"), ("knowledge base", (f"{_e(index.get('name'))}, {_e(index.get('documents'))} documents, "
             f"manifest sha256 <code>{_e(index.get('manifest_sha256'))}</code>") if index else "none"),
             ("runs", ", ".join(f"{_e(v)}: <code>{_e(r)}</code>" for v, r in (found.get("runs") or {}).items())
              or "none"), ("seed", _e(found.get("seed"))), ("created", _e(found.get("created")))]
    rows = [[f"<b>{name}</b>", value] for name, value in facts]
    packages = ", ".join(f"{_e(name)} {_e(version)}" for name, version in sorted((found.get("packages") or {}).items()))
    rows.append(["<b>packages</b>", packages or NONE])
    command = found.get("command")
    return (_table([], rows) +
            (f"<p><b>Reproduce</b></p><pre class='ta-rep-command'>{_e(command)}</pre>" if command else ""))


@dataclass
class _Summary:  # what core.charts.eval_chart_png reads (its Evaluated protocol)
    n: int
    variants: list[str]
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]]


def _examples_of(saved: dict[str, Any], task: str) -> int:
    """How many examples ``task`` has ("all": the evaluation's n): its distinct row ids, else its largest metric n."""
    if task == "all":
        return int(saved.get("n") or 0)
    ids = {row.get("id") for row in saved.get("rows") or [] if (row.get("task") or "default") == task}
    if ids:
        return len(ids)
    counts = [stats.get("n") for tasks in (saved.get("by_task") or {}).values()
              for stats in ((tasks or {}).get(task) or {}).values() if isinstance(stats, dict)]
    return max((count for count in counts if isinstance(count, int)), default=0)


def chart_img(saved: dict[str, Any], task: str = "all", css: str = "ta-rep-chart") -> str:
    """The scores-by-variant chart of ``task`` as an inline ``<img class=css>`` (base64 PNG, titled with the task's
    number of examples); empty when nothing to draw."""
    by_task = saved.get("by_task") or {}
    variants = list(dict.fromkeys([row.get("variant") for row in saved.get("rows") or []] + list(by_task)))
    png = eval_chart_png(_Summary(_examples_of(saved, task), [v for v in variants if v], by_task), task=task)
    if png is None:
        return ""
    return (f"<img class='{_e(css)}' alt='scores by variant ({_e(task)})' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")


def task_charts(saved: dict[str, Any]) -> str:
    """One chart per task (class ``ta-rep-task-chart``, each under its task's name) when the evaluation has two tasks
    or more; empty otherwise (the one task's chart is the chart of all)."""
    tasks = sorted({task for tasks in (saved.get("by_task") or {}).values() for task in tasks or {}} - {"all"})
    if len(tasks) < 2:
        return ""
    shown = [(task, chart_img(saved, task, "ta-rep-task-chart")) for task in tasks]
    return "<div class='ta-rep-task-charts'>" + "".join(
        f"<figure><figcaption>{_e(task)}</figcaption>{img}</figure>" for task, img in shown if img) + "</div>"


CSS = """
body {font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #1d1d1f; padding: 0 16px;}
h1 {font-size: 1.6em;} h2 {margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px;}
.ta-rep-table {border-collapse: collapse; margin: 8px 0; font-size: 0.92em;}
.ta-rep-table th, .ta-rep-table td {border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top;}
.ta-rep-table th {background: #f4f4f6;} .ta-rep-text {white-space: pre-wrap;} .ta-rep-ref {font-weight: 600;}
.ta-rep-chip {display: inline-block; padding: 1px 8px; border-radius: 999px; border: 1px solid #bbb;}
.ta-rep-example {border: 1px solid #ddd; border-radius: 6px; padding: 4px 10px; margin: 4px 0;}
.ta-rep-example summary {cursor: pointer;} .ta-rep-chart {max-width: 100%;} pre {white-space: pre-wrap;}
.ta-verdicts {display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px;}
.ta-verdict {border: 1px solid #ccc; border-left: 6px solid #888; border-radius: 8px; padding: 10px 14px;}
.ta-verdict-win {border-left-color: #2e7d32;} .ta-verdict-tie {border-left-color: #9e9e9e;}
.ta-verdict-thin {border-left-color: #f9a825;} .ta-verdict-single {border-left-color: #90a4ae;}
.ta-verdict-head {display: flex; gap: 10px; align-items: center; font-size: 0.9em; flex-wrap: wrap;}
.ta-verdict-status {font-weight: 600; text-transform: uppercase; letter-spacing: 0.03em; font-size: 0.85em;}
.ta-verdict-n {opacity: 0.7;} .ta-verdict-sentence {font-size: 1.25em; font-weight: 600; margin: 8px 0;}
.ta-verdict-facts {margin: 0; padding-left: 18px; font-size: 0.92em;} .ta-verdict-none {font-style: italic;}
.ta-rep-best {color: #2e7d32;}
.ta-rep-task-charts {display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px;}
.ta-rep-task-charts figure {margin: 0;} .ta-rep-task-charts figcaption {font-weight: 600;}
.ta-rep-task-chart {max-width: 100%;}
"""


def render_html(saved: dict[str, Any]) -> str:
    """results.json (as a dict) -> one self-contained HTML page (str)."""
    name = Path(str(saved.get("eval_dir") or "evaluation")).name
    variants = list(dict.fromkeys(row.get("variant") for row in saved.get("rows") or []))
    wall = saved.get("wall_s")
    intro = (f"Data <code>{_e(Path(str(saved.get('data') or '?')).name)}</code>: {_e(saved.get('n', '?'))} examples × "
             f"{len(variants)} variants ({_e(', '.join(str(v) for v in variants))})"
             f"{f', {fmt_duration(wall)}' if isinstance(wall, int | float) else ''}.")
    sections = [("Verdict", verdict_cards(saved)),
                ("Scores", chart_img(saved) + task_charts(saved) + summary_table(saved)),
                ("Knowledge vs behaviour", slices_table(saved)),
                ("Cost per variant", cost_table(saved)),
                ("Paired comparisons", comparisons_table(saved)),
                ("Every example", examples_section(saved.get("rows") or [])),
                ("Settings", _pre(saved.get("config") or {})),
                ("Provenance", provenance_section(saved))]
    body = "".join(f"<section><h2>{title}</h2>{content}</section>" for title, content in sections if content)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Tune Arena: {_e(name)}</title>"
            f"<style>{CSS}</style></head><body><h1>Tune Arena evaluation <code>{_e(name)}</code></h1><p>{intro}</p>"
            f"{body}</body></html>\n")
