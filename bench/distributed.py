"""Data-parallel LoRA training of the bundled SmolLM2-135M: one process with batch 2B vs ``--num-processes 2`` with
batch B each, replicated and sharded (``--fsdp``) (the same global batch, so the same steps and losses), through the
CLI as a user runs it.

    python -m bench.distributed [--smoke] [--steps N] [--batch-size B]

Writes bench/results/distributed.json (smoke: bench/results/smoke/distributed.json): per process count the
tokens/s the run reports (global: every process's tokens), wall time and the loss per step, and the largest
per-step loss difference to one process. On a 2-core CPU two processes share the same two cores (one thread each
instead of two), so this measures the overhead of the all-reduce and the split, not a speed-up; on N GPUs each
process has its own device (bench.gpu).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, write_result
from core.data import demo_path

ROOT = Path(__file__).resolve().parent.parent


def _train(out: Path, processes: int, batch: int, steps: int, workspace: Path, dtype: str | None,
           fsdp: bool = False) -> dict[str, Any]:
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "core", "train", "--data", str(demo_path("train.jsonl")), "--method", "lora",
               "--max-steps", str(steps), "--batch-size", str(batch), "--num-processes", str(processes),
               "--val-fraction", "0", "--set", "dropout=0", "--seed", "42", "--out", str(out), "--json",
               *(["--dtype", dtype] if dtype else []), *(["--fsdp"] if fsdp else [])]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"train with {processes} process(es) failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    return {"processes": processes, "fsdp": fsdp, "batch_per_process": batch, "global_batch": batch * processes,
            "world_size": result["world_size"], "steps": result["steps"], "tokens_per_s": result["tokens_per_s"],
            "wall_s": round(time.perf_counter() - start, 1), "train_loss": result["train_loss"],
            "final_train_loss": result["final_train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 steps of batch 2 (a check that it runs)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4, help="per process with 2 processes (one: twice it)")
    parser.add_argument("--dtype", help="fp32 to compare losses without bf16 rounding (default: the device policy)")
    args = parser.parse_args()
    steps, batch = (2, 1) if args.smoke else (args.steps, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rows = [_train(root / "one", 1, 2 * batch, steps, root / "ws", args.dtype),
                _train(root / "two", 2, batch, steps, root / "ws", args.dtype),
                _train(root / "sharded", 2, batch, steps, root / "ws", args.dtype, fsdp=True)]
    for row in rows:
        row["loss_difference"] = max(abs(a - b) for a, b in zip(rows[0]["train_loss"], row["train_loss"], strict=True))
        row["over_one"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 3) if rows[0]["tokens_per_s"] else None
    print_table(rows, ["processes", "fsdp", "batch_per_process", "global_batch", "steps", "tokens_per_s", "over_one",
                       "wall_s", "final_train_loss", "loss_difference"])
    name = "distributed" + (f"-{args.dtype}" if args.dtype else "")
    path = write_result(name, {"runs": rows, "max_loss_difference": max(row["loss_difference"] for row in rows),
                               "two_over_one": rows[1]["over_one"], "sharded_over_one": rows[2]["over_one"],
                               "steps": steps, "dtype": args.dtype or "device policy"}, smoke=args.smoke)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
