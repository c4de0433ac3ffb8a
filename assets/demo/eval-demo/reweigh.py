"""Weigh the shipped demo evaluation again from its saved rows, without running any model: the summary, paired
comparisons, verdict, knowledge/behaviour slices and cost (core.arena.evidence.reweigh; the fine-tuned variants
priced from the shipped run's result.json, the index build time as saved), then every file of this folder through
the engine's own save path (core.arena.evals.save_eval: results.json, report.html, summary.csv, examples.csv,
report.md, chart.png).

    python assets/demo/eval-demo/reweigh.py

Run it when the way evidence is computed or reported changes; the answers and their scores (the rows), the timings
and the provenance are kept as the evaluation in README.md wrote them. tests/test_demo_assets.py checks that the
shipped evidence is what its rows give.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from core.arena.evals import EvalResult, load_eval, save_eval, summarise  # noqa: E402
from core.arena.evidence import reweigh  # noqa: E402
from core.arena.runner import ArenaConfig  # noqa: E402
from core.runs import Run  # noqa: E402

RUN = HERE.parent / "run-quick-lora"  # the adapter the evaluation's fine-tuned variants used


def run_costs(saved: dict) -> dict[str, dict]:
    """variant -> the shipped run's result.json, for the variants the evaluation ran on it (as run_results reads)."""
    result = {**(Run(RUN).result or {}), "run_id": RUN.name}
    return {variant: result for variant, run_id in (saved["provenance"].get("runs") or {}).items()
            if run_id == RUN.name}


def main() -> None:
    saved = load_eval(HERE)
    rows = saved["rows"]
    config = ArenaConfig(**saved["config"])
    found = reweigh(saved, runs=run_costs(saved))
    first = rows[0]["id"]
    result = EvalResult(eval_dir=saved["eval_dir"], n=saved["n"],
                        variants=[row["variant"] for row in rows if row["id"] == first],
                        summary=summarise(rows, seed=config.seed), rows=rows, wall_s=saved["wall_s"],
                        generate_s=saved["generate_s"], metrics_s=saved["metrics_s"],
                        evidence={**found, "provenance": saved["provenance"]})
    save_eval(result, config, HERE, data_path=saved["data"])
    print(f"rewrote {HERE} from its {len(rows)} rows: " + " ".join(
        f"{task} {v['status']} ({v['winner']})" for task, v in found["verdict"].items()))


if __name__ == "__main__":
    main()
