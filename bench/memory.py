"""Training memory: peak RSS and tokens/s of the engine's LoRA run with and without each memory lever.

Each arm trains in a fresh process (``python -m bench.memory --child``), so its peak resident memory is its own and
not what an earlier run left in the allocator. Arms (same data, steps, batch, seed):

- ``before``: the loop as it was: PEFT's ``nn.Dropout`` in every LoRA layer, whole micro-batches per forward pass,
  every LoRA input cast to fp32 by PEFT, SDPA's attention;
- ``lean_dropout``: LoRA dropout that draws only the dropped positions on a CPU and saves those (or a one-byte
  mask) for backward (core.training.memory.LeanDropout);
- ``lean_split_<N>``: and forward passes of at most N padded tokens (``max_forward_tokens``; 512 is the CPU default);
- ``lean_checkpointing``: and gradient checkpointing instead of splitting (recompute in backward);
- ``no_dropout``: LoRA dropout 0, for scale: what dropout costs in time at all;
- ``input_cast``: the default but with PEFT's cast of every LoRA input to fp32 (before ``keep_lora_inputs``);
- ``sdpa_attention``: the default but with SDPA's attention (before core.attention's plain bf16 attention).

``--epochs N`` trains whole epochs (the run a user makes; RSS grows over an epoch as longer batches come and the heap
fragments) instead of ``--steps``; ``--result NAME`` writes bench/results/NAME.json instead of memory.json.

``peak_rss_mib`` is sampled every 50 ms while the run trains (the loop's PeakMemory, also ``train --json``'s
``peak_mem_bytes``); ``process_peak_mib`` is the child's lifetime maximum (getrusage), model loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_shares, print_table, run_child, write_result
from core.training.config import CPU_FORWARD_TOKENS

ARMS: dict[str, dict[str, Any]] = {
    "before": {"lean": False, "max_forward_tokens": 0, "keep_lora_inputs": False, "attention": "sdpa"},
    "lean_dropout": {"lean": True, "max_forward_tokens": 0},
    "lean_split_1024": {"lean": True, "max_forward_tokens": 1024},
    "lean_split_512": {"lean": True, "max_forward_tokens": 512},
    "lean_checkpointing": {"lean": True, "max_forward_tokens": 0, "gradient_checkpointing": True},
    "no_dropout": {"lean": True, "max_forward_tokens": 0, "dropout": 0.0},
    "input_cast": {"lean": True, "max_forward_tokens": CPU_FORWARD_TOKENS, "keep_lora_inputs": False},
    "sdpa_attention": {"lean": True, "max_forward_tokens": CPU_FORWARD_TOKENS, "attention": "sdpa"},
}
DEFAULT_ARM = f"lean_split_{CPU_FORWARD_TOKENS}"  # what a CPU run does by default
SMOKE_ARMS = ("before", "input_cast", DEFAULT_ARM)
TARGET_MIB = 3 * 1024  # issue 21: peak RSS at batch 8 <= 3 GiB


def child(settings: dict[str, Any]) -> dict[str, Any]:
    """One training run in this (fresh) process; returns its figures."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from core.training import TrainingConfig, model, train

    if not settings["lean"]:  # the arm measured before LeanDropout: PEFT's nn.Dropout stays in place
        model.lean_lora_dropout = lambda _model: 0
    if not settings.get("keep_lora_inputs", True):  # PEFT casts every LoRA input to fp32, as before
        model.keep_lora_inputs = lambda _model: 0
    if settings.get("attention") == "sdpa":  # the model keeps transformers' default attention, as before
        import core.models

        core.models.use_cpu_attention = lambda _model: False
    config = TrainingConfig(
        data=settings["data"], val_data=settings["val_data"], max_eval_examples=settings["val_rows"],
        method="lora", method_config={"r": 8, "alpha": 16, "dropout": settings.get("dropout", 0.05),
                                      "target_modules": "all-linear"},
        max_steps=None if settings.get("epochs") else settings["steps"], epochs=settings.get("epochs") or 1.0,
        batch_size=settings["batch_size"], max_length=settings["max_length"], seed=settings["seed"],
        eval_every=10**6 if settings.get("epochs") else settings["steps"],  # validation at the end only
        max_forward_tokens=settings["max_forward_tokens"],
        gradient_checkpointing=settings.get("gradient_checkpointing", False))
    result = train(config, runs_root=settings["runs"])
    return {"peak_rss_mib": round(result.peak_mem_bytes / 2**20), "tokens_per_s": result.tokens_per_s,
            "final_val_loss": result.final_val_loss, "final_train_loss": result.final_train_loss,
            "train_s": round(result.wall_s, 1), "dtype": result.dtype,
            "process_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_arm(name: str, seed: int, base: dict[str, Any], work: Path) -> dict[str, Any]:
    settings = {**base, **ARMS[name], "seed": seed, "runs": str(work / f"{name}-{seed}")}
    return {"arm": name, "seed": seed, **run_child("bench.memory", settings, f"arm {name} (seed {seed})")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, three arms: proves the code paths run")
    parser.add_argument("--arms", default=None, help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds (each arm trains once per seed)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 12; smoke 1)")
    parser.add_argument("--epochs", type=int, default=None, help="whole epochs per run instead of --steps")
    parser.add_argument("--result", default="memory", help="write bench/results/RESULT.json (default memory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    names = [n.strip() for n in (args.arms or ",".join(SMOKE_ARMS if args.smoke else ARMS)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown[0]!r}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds: integers separated by commas, got {args.seeds!r}")
    from core.data import demo_path

    smoke = args.smoke
    base = {"data": str(demo_path("train.jsonl")), "val_data": str(demo_path("validation.jsonl")),
            "val_rows": 4 if smoke else 32, "steps": args.steps or (1 if smoke else 12),
            "batch_size": 2 if smoke else 8, "max_length": 128 if smoke else 512, "epochs": args.epochs}
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        for seed in seeds:
            for name in names:
                print(f"training: {name} (seed {seed})", flush=True)
                rows.append(run_arm(name, seed, base, Path(work)))
    summary = []
    for name in names:
        runs = [row for row in rows if row["arm"] == name]
        summary.append({"arm": name, "peak_rss_mib": round(statistics.mean(r["peak_rss_mib"] for r in runs)),
                        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
                        "process_peak_mib": max(r["process_peak_mib"] for r in runs),
                        "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in runs), 1),
                        "final_val_loss": round(statistics.mean(r["final_val_loss"] for r in runs), 4),
                        "seeds": len(runs), **ARMS[name]})
    print_table(summary, ["arm", "peak_rss_mib", "peak_rss_mib_max", "process_peak_mib", "tokens_per_s",
                          "final_val_loss"])
    default = next((row for row in summary if row["arm"] == DEFAULT_ARM), None)
    targets = []
    if default is not None and not smoke:
        what = f"the default: lean dropout, {CPU_FORWARD_TOKENS}-token passes"
        targets.append({"target": f"peak RSS at batch 8 <= 3 GiB ({what})",
                        "value": default["peak_rss_mib_max"], "met": default["peak_rss_mib_max"] <= TARGET_MIB})
    payload = {"settings": {**base, "data": "assets/demo/train.jsonl", "val_data": "assets/demo/validation.jsonl",
                            "method": "lora r=8 all-linear", "seeds": seeds, "threads": os.cpu_count()},
               "summary": summary, "runs": rows, "targets": targets, "cpu_during_run_note": "RSS does not depend on "
               "other jobs; tokens/s does (see cpu_during_run)", "wall_s": round(time.perf_counter() - started, 1)}
    shares = cpu_shares()
    if shares is not None and shares["other_jobs"] > 0.1:
        print(f"warning: other jobs used {shares['other_jobs']:.0%} of the CPU: tokens/s are not reliable")
    path = write_result(args.result, payload, smoke=smoke)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
