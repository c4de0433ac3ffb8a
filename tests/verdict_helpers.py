"""A saved evaluation (results.json as a dict) with or without the verdict keys (comparisons, verdict, slices, cost,
provenance), built in the test: the report, the Evaluate and Arena tabs and the browser test read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.arena.evals import summarise

SENTENCES = {
    "qa": "For qa, few_shot wins: ROUGE-L 0.62 vs rag 0.41 (+0.21, 95% CI [+0.08, +0.33], p = 0.004).",
    "classification": "For classification, few_shot and finetuned tie: accuracy 0.67 vs 0.67, no significant "
                      "difference; few_shot is cheaper (no training).",
}
HOSTILE = "<script>alert('x')</script> see https://evil.example/steal"


def _row(uid: str, task: str, variant: str, answer: str, metrics: dict[str, float | None], **extra: Any) -> dict:
    return {"variant": variant, "strategy": variant, "adapter": None, "available": True, "error": None,
            "answer": answer, "new_tokens": 6, "prompt_tokens": 120, "generate_s": 0.4, "latency_s": 0.5,
            "metrics": metrics, "id": uid, "task": task, "instruction": f"Question {uid}?", "input": "",
            "reference": f"Reference {uid}", "sources": [], **extra}


def rows() -> list[dict]:
    """3 qa and 3 classification examples x zero_shot, few_shot, finetuned (one answer with a script and a URL)."""
    out = []
    scores = {"zero_shot": (0.1, 0.0), "few_shot": (0.6, 1.0), "finetuned": (0.4, 1.0)}
    for number in range(3):
        for variant, (rouge, accuracy) in scores.items():
            answer = HOSTILE if (variant, number) == ("few_shot", 0) else f"{variant} answer {number}"
            out.append(_row(f"q{number}", "qa", variant, answer, {"rougeL": rouge + number / 10, "token_f1": rouge}))
            out.append(_row(f"c{number}", "classification", variant, "billing",
                            {"rougeL": accuracy, "accuracy": accuracy if number else 0.0}))
    out[0]["instruction"] = "What is <b>E15</b>? </details><script>alert(1)</script>"
    return out


def verdict_keys() -> dict[str, Any]:
    """The keys the lead's save_eval adds: comparisons, verdict, slices, cost, provenance."""
    stats = {"mean": 0.5, "low": 0.3, "high": 0.7, "n": 3}
    return {
        "comparisons": [
            {"task": "qa", "metric": "rougeL", "a": "few_shot", "b": "finetuned", "mean_a": 0.7, "mean_b": 0.5,
             "diff": 0.2, "ci": [0.08, 0.33], "p": 0.004, "p_holm": 0.012, "n": 3, "test": "permutation",
             "significant": True},
            {"task": "classification", "metric": "accuracy", "a": "few_shot", "b": "finetuned", "mean_a": 0.667,
             "mean_b": 0.667, "diff": 0.0, "ci": [-0.2, 0.2], "p": 1.0, "p_holm": 1.0, "n": 3, "test": "mcnemar",
             "significant": False}],
        "verdict": {
            "qa": {"metric": "rougeL", "n": 3, "means": {"zero_shot": 0.2, "few_shot": 0.7, "finetuned": 0.5},
                   "winner": "few_shot", "winner_mean": 0.7, "runner_up": "finetuned", "runner_up_mean": 0.5,
                   "margin": 0.2, "ci": [0.08, 0.33], "p": 0.004, "p_holm": 0.012,
                   "vs_zero_shot": {"diff": 0.5, "ci": [0.4, 0.6], "p_holm": 0.001}, "cheapest_equivalent": None,
                   "copying": {"variant": "nearest_answer", "mean": 0.3, "beaten": True}, "status": "win",
                   "sentence": SENTENCES["qa"]},
            "classification": {"metric": "accuracy", "n": 3, "means": {"zero_shot": 0.0, "few_shot": 0.667,
                                                                        "finetuned": 0.667},
                               "winner": "few_shot", "winner_mean": 0.667, "runner_up": "finetuned",
                               "runner_up_mean": 0.667, "margin": 0.0, "ci": [-0.2, 0.2], "p": 1.0, "p_holm": 1.0,
                               "vs_zero_shot": None, "cheapest_equivalent": "few_shot", "copying": None,
                               "status": "tie", "sentence": SENTENCES["classification"]}},
        "slices": {"knowledge": {"n": 3, "rule": "questions answered from the corpus (qa)",
                                 "summary": {"few_shot": {"rougeL": stats}, "finetuned": {"rougeL": stats}}},
                   "behaviour": {"n": 3, "rule": "format and label tasks",
                                 "summary": {"few_shot": {"rougeL": stats, "accuracy": stats}}}},
        "cost": {"zero_shot": {"prompt_tokens": 80, "latency_s": 0.4, "new_tokens": 6, "train_wall_s": None,
                               "trainable_params": None, "adapter_bytes": None, "peak_mem_bytes": None,
                               "index_build_s": None, "training": False, "retrieval": False},
                 "finetuned": {"prompt_tokens": 80, "latency_s": 0.5, "new_tokens": 6, "train_wall_s": 312.0,
                               "trainable_params": 921600, "adapter_bytes": 9800000, "peak_mem_bytes": 2.1e9,
                               "index_build_s": None, "training": True, "retrieval": False}},
        "provenance": {"data": "assets/demo/test.jsonl", "data_sha256": "ab" * 32, "index": None,
                       "runs": {"finetuned": "demo-quick-lora"}, "seed": 42,
                       "packages": {"torch": "2.13.0", "transformers": "4.57.0"},
                       "command": "python -m core eval --data assets/demo/test.jsonl --adapter demo-quick-lora",
                       "created": "2025-01-01T00:00:00Z"},
    }


def saved_eval(*, with_verdict: bool = True, eval_dir: str = "/ws/evals/demo-eval") -> dict[str, Any]:
    """results.json as a dict; the summary from the engine's own summarise over the rows."""
    found = rows()
    by_task = summarise(found, n_resamples=100)
    saved = {"data": "assets/demo/test.jsonl", "eval_dir": eval_dir, "n": 6, "wall_s": 42.0,
             "config": {"variants": ["zero_shot", "few_shot", "finetuned"], "few_shot_k": 3, "seed": 42},
             "summary": {v: {m: s["mean"] for m, s in t["all"].items()} for v, t in by_task.items()},
             "by_task": by_task, "rows": found}
    return {**saved, **verdict_keys()} if with_verdict else saved


def install_eval(workspace: Path, name: str = "demo-eval", *, with_verdict: bool = True) -> Path:
    """Write ``saved_eval`` as ``<workspace>/evals/<name>/results.json``; the folder."""
    folder = workspace / "evals" / name
    folder.mkdir(parents=True, exist_ok=True)
    saved = saved_eval(with_verdict=with_verdict, eval_dir=str(folder))
    (folder / "results.json").write_text(json.dumps(saved), encoding="utf-8")
    return folder
