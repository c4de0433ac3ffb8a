"""The run catalogue: one row of plain values per training run, with the scores of the newest evaluation that used
it. ``Engine.list_runs`` (the Runs tab, ``python -m core runs``) and ``Engine.run_details`` are built on it; so are
the data parts of the Runs tab's headline and trade-off chart (which runs, which quality, the Pareto front).

Pure: run folders (core.runs.Run) and ``Engine.list_evals()`` rows in, JSON-ready dicts out. Nothing is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.arena import parse_variants
from core.charts import TradeoffGroup
from core.inference import merge_refusal
from core.runs import STALE_S, Run, effective_state, status_age_s
from core.text import fmt_duration, short_name

CONTRACT_KEYS = ("run_id", "run_dir", "method", "state", "steps", "trainable_params", "adapter_bytes",
                 "final_val_loss", "wall_s")
"""The keys of a ``python -m core runs --json`` row (the CLI contract); every catalogue row has them."""
SCORES = ("rougeL", "token_f1", "accuracy")
"""The evaluation means a row carries (None when not measured)."""
ROW_KEYS = (*CONTRACT_KEYS, "state_text", "error", "total_params", "trainable_percent", "tokens_per_s",
            "total_steps", "first_val_loss", "final_train_loss", "eval", "variant", *SCORES, "objective",
            "val_accuracy", "forgetting")
"""Every key of a catalogue row, in order. ``objective``: what the run trained (sft, classification, ...): a
classification run answers ``finetuned`` variants with labels (its ``accuracy`` is the score to read);
``val_accuracy``: its validation accuracy at the end of training; ``forgetting``: its change from the base on
benchmark tasks (Engine.forgetting_index), None until a benchmark has the run."""
FINETUNED = "finetuned"  # the arena strategy whose scores measure a run on its own (finetuned_rag mixes in RAG)
COST_KEYS = ("trainable_params", "wall_s")  # the costs the trade-off chart puts on its x axes


# --------------------------------------------------------------------------------------------------------------------
# Evaluations matched to their run
# --------------------------------------------------------------------------------------------------------------------


def adapter_matches(adapter: str, run: Run) -> bool:
    """Whether an evaluation's adapter (a run id or a run folder, as the user gave it) names ``run``."""
    if not adapter:
        return False
    path = Path(adapter).expanduser()
    try:
        if path.is_dir() and path.resolve() == run.path.resolve():
            return True
    except OSError:
        pass
    return short_name(adapter) == run.run_id  # ids are unique (time + random suffix); covers relative paths too


def eval_scores(run: Run, evals: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fine-tuned variant's mean scores in the newest evaluation that used ``run``, or None.

    ``evals`` are ``Engine.list_evals()`` rows (newest first). The variant is ``finetuned`` when the evaluation had
    one adapter and ``finetuned@<run id>`` when it compared several (``core.arena.parse_variants`` names them).
    Returns ``{"eval", "variant", "rougeL", "token_f1", "accuracy"}`` (a score is None when not measured)."""
    for row in evals:
        if row.get("error"):
            continue
        adapters = [str(a) for a in row.get("adapters") or []]
        for variant, means in (row.get("summary") or {}).items():
            if variant.partition("@")[0] != FINETUNED or not isinstance(means, dict):
                continue
            try:
                specs = parse_variants([variant], adapters)
            except ValueError:
                continue
            if any(spec.name == variant and adapter_matches(spec.adapter or "", run) for spec in specs):
                return {"eval": row.get("name") or short_name(row.get("folder", "")), "variant": variant,
                        **{key: means.get(key) for key in SCORES}}
    return None


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------


def state_text(state: str, status: dict[str, Any], now: float | None = None) -> str:
    """One line: ``completed``, ``running · step 3/10``, ``stopped · step 5/10``, ``failed: <reason>``,
    ``interrupted · step 3/10 (...)`` for a run whose process was killed (see core.runs.effective_state), and a
    hint for a running run whose live process has not written for ``STALE_S``."""
    step, total = status.get("step"), status.get("total_steps")
    where = f" · step {step}/{total}" if step is not None and total else (f" · step {step}" if step else "")
    if state == "failed":
        return f"failed: {status.get('error') or 'no reason recorded'}"
    if state == "running":
        age = status_age_s(status, now)
        if age is not None and age > STALE_S:
            return f"running{where} · no update for {fmt_duration(age)} (hung? stop it, or resume it once stopped)"
        return f"running{where}"
    if state == "stopped":
        return f"stopped{where}"
    if state == "interrupted":
        return f"interrupted{where} (its process ended without finishing: resume it, or delete it)"
    return state


def unreadable_row(run: Run, err: BaseException) -> dict[str, Any]:
    """The row of a folder whose files cannot be read: every key, ``state`` ``unreadable`` and the reason."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(run_id=run.run_id, run_dir=str(run.path), state="unreadable", state_text=f"unreadable: {err}",
               error=str(err))
    return row


def run_row(run: Run, evals: Sequence[dict[str, Any]] = (), now: float | None = None) -> dict[str, Any]:
    """The catalogue row of one run (keys: ``ROW_KEYS``). A run still training, or failed before its result was
    written, takes its live numbers from metrics.jsonl; an unreadable folder gives ``unreadable_row``."""
    try:
        config, status, result = run.config, run.status, run.result or {}
        rows = run.metrics()
    except (OSError, ValueError) as err:
        return unreadable_row(run, err)
    if not isinstance(config, dict) or not isinstance(status, dict) or not isinstance(result, dict):
        return unreadable_row(run, ValueError("config.json, status.json or result.json is not a JSON object"))
    state = effective_state(status, now)
    train = [(row["step"], row["loss"]) for row in rows if "loss" in row]
    val = [(row["step"], row["val_loss"]) for row in rows if "val_loss" in row]
    last = next((row for row in reversed(rows) if "loss" in row), {})
    trainable, total = result.get("trainable_params"), result.get("total_params")
    percent = result.get("trainable_percent")
    if percent is None and trainable is not None and total:
        percent = 100.0 * trainable / total
    scores = eval_scores(run, evals) or {}
    return {
        "run_id": run.run_id, "run_dir": str(run.path), "method": config.get("method"), "state": state,
        "steps": result.get("steps", status.get("step")), "trainable_params": trainable,
        "adapter_bytes": result.get("adapter_bytes"),
        "final_val_loss": result.get("final_val_loss", val[-1][1] if val else None),
        "wall_s": result.get("wall_s", last.get("elapsed_s")),
        "state_text": state_text(state, status, now), "error": status.get("error"),
        "total_params": total, "trainable_percent": percent,
        "tokens_per_s": result.get("tokens_per_s", last.get("tokens_per_s")),
        "total_steps": result.get("total_steps", status.get("total_steps")),
        "first_val_loss": result.get("first_val_loss", val[0][1] if val else None),
        "final_train_loss": result.get("final_train_loss", train[-1][1] if train else None),
        "eval": scores.get("eval"), "variant": scores.get("variant"), **{key: scores.get(key) for key in SCORES},
        "objective": config.get("objective") or "sft",
        "val_accuracy": (result.get("extras") or {}).get("val_accuracy"),
    }


def catalogue(runs: Iterable[Run], evals: Sequence[dict[str, Any]] = (), now: float | None = None,
              ) -> list[dict[str, Any]]:
    """``run_row`` of each run, in the order given (``RunStore.list``: newest first)."""
    now = time.time() if now is None else now
    return [run_row(run, evals, now) for run in runs]


def run_files(run: Run, limit: int = 300) -> tuple[list[tuple[str, int]], bool]:
    """(path relative to the run folder, bytes) of its files, hidden temporary files left out, sorted; and whether
    more than ``limit`` files were there (only the first ``limit`` are listed)."""
    files: list[tuple[str, int]] = []
    for path in sorted(run.path.rglob("*")):
        relative = path.relative_to(run.path)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if len(files) >= limit:
            return files, True
        try:
            files.append((relative.as_posix(), path.stat().st_size))
        except OSError:  # removed meanwhile
            continue
    return files, False


def run_details(run: Run, evals: Sequence[dict[str, Any]], export_dir: Path) -> dict[str, Any]:
    """Everything about one run: ``row`` (as ``run_row``), ``config``, ``card`` (card.md, None before training
    ends), ``files`` / ``more_files`` (``run_files``), ``train_curve`` / ``val_curve`` ((step, loss) pairs),
    ``merge_refusal`` (core.inference's one-line reason, None when it can be merged), ``export_dir`` and whether
    it holds an export already (``exported``)."""
    row = run_row(run, evals)
    files, more = run_files(run)
    details: dict[str, Any] = {"row": row, "config": None, "card": None, "files": files, "more_files": more,
                               "train_curve": [], "val_curve": [], "merge_refusal": None,
                               "export_dir": str(export_dir), "exported": False}
    if row["state"] == "unreadable":
        return details
    card = run.path / "card.md"
    try:
        details.update(config=run.config, train_curve=run.train_curve(), val_curve=run.val_curve(),
                       card=card.read_text(encoding="utf-8") if card.is_file() else None)
    except (OSError, ValueError) as err:
        details["row"] = unreadable_row(run, err)
        return details
    details["merge_refusal"] = merge_refusal(run)
    details["exported"] = export_dir.is_dir() and any(export_dir.iterdir())
    return details


# --------------------------------------------------------------------------------------------------------------------
# Comparing runs: the headline and the trade-off
# --------------------------------------------------------------------------------------------------------------------


def pareto_front(points: Iterable[tuple[float, float]], higher_better: bool) -> list[tuple[float, float]]:
    """The (cost, quality) points that no cheaper point beats, cost ascending."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or (y > front[-1][1] if higher_better else y < front[-1][1]):
            front.append((x, y))
    return front


def tradeoff_groups(rows: Sequence[dict[str, Any]]) -> list[TradeoffGroup]:
    """What the trade-off chart compares (``core.charts.tradeoff_png`` draws it): quality against each cost of
    ``COST_KEYS``, for runs with a result (not running). Quality is the evaluation's ROUGE-L (higher is better)
    for evaluated runs that generate; else the final validation loss (lower is better), one group per objective
    (an SFT loss and a distillation loss are different measures); classification heads, which answer with a label,
    by their test accuracy once evaluated, else their validation accuracy; and runs benchmarked on the same tasks by
    their mean change from the base (``benchmark_groups``). Quality measures are never mixed on one axis. Empty
    groups are left out."""
    usable = [r for r in rows if all(r.get(key) for key in COST_KEYS) and r.get("state") not in ("running", None)]
    heads = [r for r in usable if r.get("objective") == "classification"]
    generating = [r for r in usable if r.get("objective") != "classification"]
    unevaluated = [r for r in generating if r.get("rougeL") is None and r.get("final_val_loss") is not None]
    candidates = [
        TradeoffGroup("Evaluated runs: ROUGE-L of the fine-tuned variant (higher is better)", "ROUGE-L  ↑ better",
                      "rougeL", True, [r for r in generating if r.get("rougeL") is not None]),
    ]
    for objective in sorted({r.get("objective") or "sft" for r in unevaluated}):
        title = "Runs not evaluated yet" + ("" if objective == "sft" else f" ({objective})")
        candidates.append(TradeoffGroup(
            f"{title}: final validation loss (lower is better; comparable on the same data only)",
            "validation loss  ↓ better", "final_val_loss", False,
            [r for r in unevaluated if (r.get("objective") or "sft") == objective]))
    candidates += [
        TradeoffGroup("Classification heads: test accuracy of the fine-tuned variant (higher is better)",
                      "accuracy  ↑ better", "accuracy", True, [r for r in heads if r.get("accuracy") is not None]),
        TradeoffGroup("Classification heads not evaluated yet: validation accuracy (higher is better)",
                      "validation accuracy  ↑ better", "val_accuracy", True,
                      [r for r in heads if r.get("accuracy") is None and r.get("val_accuracy") is not None]),
    ]
    candidates += benchmark_groups(usable)
    groups = [group for group in candidates if group.points]
    for group in groups:
        group.fronts = {key: pareto_front([(float(r[key]), float(r[group.key])) for r in group.points],
                                          group.higher_better) for key in COST_KEYS}
    return groups


def benchmark_groups(rows: Sequence[dict[str, Any]]) -> list[TradeoffGroup]:
    """Runs with a ``forgetting`` entry, one group per set of benchmark tasks (means over different tasks do not
    compare): y is the mean of the run's deltas over those tasks, ``benchmark_delta`` (higher is better; below 0 the
    run lost ground outside, or on, its task)."""
    by_tasks: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        deltas = (row.get("forgetting") or {}).get("deltas") or {}
        values = [entry["delta"] for entry in deltas.values() if isinstance(entry.get("delta"), int | float)]
        if values:
            by_tasks.setdefault(tuple(sorted(deltas)), []).append({**row, "benchmark_delta": sum(values) / len(values)})
    groups = []
    for tasks, points in sorted(by_tasks.items()):
        names = ", ".join(task.removeprefix("tune_arena_") for task in tasks)
        groups.append(TradeoffGroup(f"Benchmarked runs: mean change from the base on {names} (higher is better; "
                                    "below 0: forgetting)", "Δ vs base  ↑ better", "benchmark_delta", True, points))
    return groups


def headline_facts(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers above the runs table: ``count``, ``states`` ((state, runs) most first), ``best`` (the evaluated
    run with the highest ROUGE-L, else the finished run with the lowest validation loss, else None) and ``best_by``
    (``"rougeL"``, ``"final_val_loss"`` or None)."""
    counts: dict[str, int] = {}
    for row in rows:
        state = row.get("state") or "unknown"
        counts[state] = counts.get(state, 0) + 1
    facts: dict[str, Any] = {"count": len(rows), "states": sorted(counts.items(), key=lambda kv: -kv[1]),
                             "best": None, "best_by": None}
    scored = [row for row in rows if row.get("rougeL") is not None]
    by_loss = [row for row in rows if row.get("final_val_loss") is not None and row.get("state") != "running"]
    if scored:
        facts.update(best=max(scored, key=lambda row: row["rougeL"]), best_by="rougeL")
    elif by_loss:
        facts.update(best=min(by_loss, key=lambda row: row["final_val_loss"]), best_by="final_val_loss")
    return facts
