"""Run folders and saved evaluations on disk, written as core.runs / core.training / core.arena.evals write them,
for the run catalogue, the charts and the Runs tab (no model is trained)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from core.io import write_json
from core.runs import RunStore

LORA = "20250101-120000-lora-ab12"
FULL = "20250101-110000-full-cd34"
PROMPT = "20250101-100000-prompt-tuning-ef56"
IA3_RUNNING = "20250101-140000-ia3-0002"


def make_run(root: Path, run_id: str, method: str = "lora", *, state: str = "completed", steps: int = 30,
             total: int = 30, trainable: int | None = 1_843_200, total_params: int = 136_358_400,
             wall_s: float = 125.4, val: tuple[float, ...] = (2.5, 1.9, 1.6), error: str | None = None,
             result: bool = True, method_config: dict[str, Any] | None = None, weights: str | None = "adapter",
             card: bool = True) -> Path:
    """A run folder: config.json, status.json, metrics.jsonl (train rows per step, val rows), result.json."""
    run = RunStore(root).create({"format": 1, "data": "assets/demo/train.jsonl", "method": method,
                                 "method_config": method_config if method_config is not None else {"r": 8},
                                 "base_model": None, "max_steps": total, "batch_size": 8}, root / run_id)
    losses = [round(3.0 - 1.5 * step / max(total, 1), 4) for step in range(1, steps + 1)]
    for step, loss in enumerate(losses, 1):
        run.append_metrics({"step": step, "loss": loss, "lr": 1e-4, "grad_norm": 1.0,
                            "tokens_per_s": 170.0 + step, "elapsed_s": round(step * 4.0, 3)})
    for number, value in enumerate(val):
        run.append_metrics({"step": number * max(steps // max(len(val) - 1, 1), 1), "val_loss": value})
    extra = {"error": error} if error else {}
    run.set_status(state, step=steps, total_steps=total, **extra)
    if weights:
        (run.path / weights).mkdir()
        (run.path / weights / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    if result:
        write_json(run.path / "result.json", {
            "run_dir": str(run.path), "run_id": run_id, "method": method, "state": state, "steps": steps,
            "total_steps": total, "trainable_params": trainable, "total_params": total_params,
            "adapter_bytes": 7_372_800, "train_loss": losses, "final_train_loss": losses[-1] if losses else None,
            "first_val_loss": val[0] if val else None, "final_val_loss": val[-1] if val else None,
            "tokens_per_s": 175.3, "peak_mem_bytes": 2_000_000_000, "wall_s": wall_s, "train_examples": 90,
            "val_examples": 10, "data_sha256": "ab" * 32, "device": "cpu", "dtype": "float32", "base_model": "x"})
    if card:
        (run.path / "card.md").write_text(f"# Run {run_id}\n\n| Method | {method} |\n", encoding="utf-8")
    return run.path


def kill_owner(run_dir: Path) -> None:
    """Rewrite a running run's status as a killed process leaves it: still running, its owner pid gone."""
    path = Path(run_dir) / "status.json"
    status = json.loads(path.read_text(encoding="utf-8"))
    status["owner"] = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": 1.0}  # above pid_max
    write_json(path, status)


def make_eval(workspace: Path, name: str, adapters: list[str], summary: dict[str, dict[str, float]]) -> Path:
    """An evaluation folder under ``workspace/evals`` whose results.json has ``summary`` (variant -> metric means)."""
    folder = workspace / "evals" / name
    folder.mkdir(parents=True)
    write_json(folder / "results.json", {"data": "assets/demo/test.jsonl", "config": {"adapters": adapters,
                                                                                      "variants": list(summary)},
                                         "summary": summary, "n": 12, "by_task": {}, "rows": [], "wall_s": 60.0})
    return folder
