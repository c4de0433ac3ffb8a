"""Batch evaluation speed: ``Engine.evaluate`` over the demo test set with all five variants: seconds per example,
per (example x variant), and the shares of the wall time spent generating and computing metrics.

    python -m bench.eval [--smoke] [--limit N] [--max-new-tokens N] [--variants a,b,...]

A first, one-example evaluation warms the engine up (model, adapter, index, metric modules, few-shot vectors); its
wall time is reported apart, as "first eval in a process" overhead. Writes bench/results/eval.json
(smoke: bench/results/smoke/eval.json).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_decoder_option, generation_config, print_table, write_result
from core.arena import ArenaConfig
from core.data import demo_path

VARIANTS = ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core.engine import Engine

    workspace = Path(tempfile.mkdtemp(prefix="bench-eval-ws-"))
    try:
        engine = Engine(workspace)
        began = time.perf_counter()
        index = engine.ensure_demo_index() if {"rag", "finetuned_rag"} & set(args.variants) else None
        index_s = time.perf_counter() - began
        run_dir = engine.install_demo_run()
        data = demo_path("test.jsonl")
        config = ArenaConfig(variants=args.variants, adapters=[str(run_dir)], index=str(index) if index else None,
                             generation=generation_config(args, max_new_tokens=args.max_new_tokens),
                             max_batch_size=args.max_batch_size)
        began = time.perf_counter()
        warm = engine.evaluate(data, config, out=workspace / "evals" / "warm-up", limit=1)
        warm_up_s = time.perf_counter() - began
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        def progress(stage: str, done: int, total: int) -> None:
            if stage == "generate":
                print(f"generate {done}/{total} rows, {time.perf_counter() - began:.0f} s "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

        result = engine.evaluate(data, config, out=workspace / "evals" / "bench", limit=args.limit,
                                 on_progress=progress)
        outer_s = time.perf_counter() - began
        cells = result.n * len(result.variants)
        available = [row for row in result.rows if row.get("available", True)]
        tokens = sum(int(row.get("new_tokens") or 0) for row in available)
        other_s = result.wall_s - result.generate_s - result.metrics_s
        summary: dict[str, Any] = {
            "examples": result.n, "variants": result.variants, "cells": cells, "available_cells": len(available),
            "max_new_tokens": args.max_new_tokens, "max_batch_size": args.max_batch_size,
            "wall_s": round(result.wall_s, 2), "evaluate_call_s": round(outer_s, 2),
            "generate_s": round(result.generate_s, 2), "metrics_s": round(result.metrics_s, 2),
            "summarise_and_save_s": round(other_s, 2),
            "s_per_example": round(result.wall_s / result.n, 3), "s_per_cell": round(result.wall_s / cells, 3),
            "generate_share": round(result.generate_s / result.wall_s, 4),
            "metrics_share": round(result.metrics_s / result.wall_s, 4),
            "other_share": round(other_s / result.wall_s, 4),
            "metrics_ms_per_cell": round(result.metrics_s * 1000 / max(len(available), 1), 1),
            "new_tokens": tokens, "generated_tokens_per_s": round(tokens / result.generate_s, 1),
            "first_eval_in_process_s": round(warm_up_s, 2), "first_eval_wall_s": round(warm.wall_s, 2),
            "demo_index_build_s": round(index_s, 2), "device": engine.host().base.device,
            "dtype": str(engine.host().base.dtype),
        }
        if torch.cuda.is_available():
            summary["peak_vram_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        per_variant = []
        for variant in result.variants:
            rows = [row for row in available if row["variant"] == variant]
            if not rows:
                per_variant.append({"variant": variant, "available": 0})
                continue
            means = result.means().get(variant, {})
            per_variant.append({"variant": variant, "available": len(rows),
                                "mean_new_tokens": round(sum(r["new_tokens"] for r in rows) / len(rows), 1),
                                "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in rows) / len(rows), 1),
                                "mean_generate_s": round(sum(r["generate_s"] or 0 for r in rows) / len(rows), 2),
                                "rougeL": None if means.get("rougeL") is None else round(means["rougeL"], 3)})
        scorer = engine.scorer()
        return {"summary": summary, "per_variant": per_variant,
                "metric_module_load_s": {name: round(s, 3) for name, s in scorer.load_seconds.items()}}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 examples, 2 variants, 4 tokens; for CI")
    parser.add_argument("--limit", type=int, default=20, help="test examples (the first N)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8, help="rows per generate call (ArenaConfig)")
    add_decoder_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.variants, args.max_new_tokens = 2, "zero_shot,finetuned", 4
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()
    began = time.perf_counter()
    payload = run(args)
    payload["loadavg_before"] = [round(x, 2) for x in load_before]
    payload["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    payload["bench_wall_s"] = round(time.perf_counter() - began, 1)
    summary = payload["summary"]
    summary["decoder"] = args.decoder
    print_table([{key: summary[key] for key in ("examples", "cells", "wall_s", "s_per_example", "s_per_cell",
                                                "generate_s", "generate_share", "metrics_s", "metrics_share",
                                                "generated_tokens_per_s")}])
    print()
    print_table(payload["per_variant"])
    path = write_result("eval" if args.decoder == "engine" else "eval-hf", payload, smoke=args.smoke)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
