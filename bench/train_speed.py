"""Training throughput of every method on the bundled SmolLM2-135M and the demo train set, side by side.

    python -m bench.train_speed [--steps N] [--methods lora,full,...] [--dtype fp32|bf16] [--out PATH]

Each row: tokens/s (non-padding tokens through forward+backward), peak memory, trainable share, seconds per step.
Also the LoRA loop with the LM head applied to every position (answer_only_head=False), to keep the measured gain
of the answer-only head visible. Writes bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from core.data import demo_path
from core.methods import METHODS
from core.runs import write_json
from core.training import TrainingConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = {"prompt_tuning": {"num_virtual_tokens": 20}, "prefix_tuning": {"num_virtual_tokens": 20},
         "p_tuning": {"num_virtual_tokens": 20}, "freeze": {"trainable_layers": 4}, "lora": {"r": 8},
         "qlora": {"r": 8}}


def machine() -> dict[str, object]:
    import torch
    import transformers

    from core.models import cpu_has_bf16

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "bf16_hardware": cpu_has_bf16(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__}


def measure(method: str, steps: int, dtype: str | None, answer_only_head: bool = True) -> dict[str, object]:
    runs = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    try:
        config = TrainingConfig(data=str(demo_path("train.jsonl")), val_fraction=0.0, method=method,
                                method_config=SMALL.get(method, {}), max_steps=steps, batch_size=8, dtype=dtype,
                                checkpoint_every=10_000, answer_only_head=answer_only_head)
        start = time.perf_counter()
        result = train(config, runs_root=runs)
        return {"method": method, "answer_only_head": answer_only_head, "dtype": result.dtype,
                "tokens_per_s": result.tokens_per_s, "s_per_step": round(
                    (time.perf_counter() - start) / max(1, result.steps), 2),
                "peak_mem_mib": round(result.peak_mem_bytes / 2**20), "trainable_percent": round(
                    result.trainable_percent, 4), "adapter_bytes": result.adapter_bytes,
                "loss_first": result.train_loss[0], "loss_last": result.train_loss[-1]}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--dtype", default=None, help="fp32 or bf16 (default: the device policy)")
    parser.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for method in args.methods.split(","):
        rows.append(measure(method, args.steps, args.dtype))
        print(json.dumps(rows[-1]), flush=True)
        if method == "lora":
            rows.append(measure(method, args.steps, args.dtype, answer_only_head=False))
            print(json.dumps(rows[-1]), flush=True)
    write_json(Path(args.out), {"benchmark": "train_speed", "steps": args.steps, "batch_size": 8,
                                "data": "assets/demo/train.jsonl", "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
