"""Every training method on the same data and steps: the cost-versus-quality table behind the Runs tab's chart.

    python -m bench.methods [--smoke] [--steps N] [--methods lora,full,...] [--recipes head,distil-half,...]
                            [--eval-rows N] [--workspace DIR]

Each method trains in its own process (``python -m core train --json``, so peak memory is that method's alone) on the
demo train set for the same number of optimizer steps and batch size, with the method's default settings and
learning rate, and the demo validation set (first 32 rows) for the validation loss. Then one in-process evaluation
runs every trained run side by side (``finetuned@<run>`` variants plus ``zero_shot`` as the reference point) on the
first N rows of the demo test set: ROUGE-L over all rows, accuracy on the classification rows.

Recipes (``--recipes``, none by default) add the other objectives and the hybrids with the same columns: ``head``
(the sentiment-head preset: a classification head on all-MiniLM-L6-v2, trained on the demo train set's classification
rows and scored on accuracy only), ``distil-half`` (a half-depth student distilled from the base), ``mpt``
(multi-task prompt tuning over the three demo tasks), ``full-lr-decay``, ``freeze-gradual`` and ``lora-top2``.

Columns: trainable params (and %), saved weights in bytes, peak memory (RSS on CPU, max allocated on CUDA), training
wall time (model load included), tokens/s (answer and prompt tokens through forward and backward), final validation
loss, test ROUGE-L and accuracy. With ``--workspace`` the runs and the evaluation stay there (``workspace`` puts them
in the app's Runs tab); by default they go to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import print_table, write_result
from core.data import demo_path
from core.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


CLASSIFICATION_ONLY = "classification-rows"  # a recipe trained and validated on the demo's classification rows

# name -> (extra `train` arguments, data); the method's or preset's own settings otherwise
RECIPES: dict[str, tuple[list[str], str | None]] = {
    "head": (["--preset", "sentiment-head"], CLASSIFICATION_ONLY),
    "distil-half": (["--preset", "distil-half"], None),
    "mpt": (["--preset", "mpt"], None),
    "full-lr-decay": (["--method", "full", "--layerwise-lr-decay", "0.8"], None),
    "freeze-gradual": (["--method", "freeze", "--set", "trainable_layers=4", "--gradual-unfreezing", "5"], None),
    "lora-top2": (["--method", "lora", "--set", "unfreeze_top=2"], None),
}


def _classification_rows(folder: Path) -> tuple[str, str]:
    """The demo train and validation sets' classification rows, written to ``folder``."""
    paths = []
    for name in ("train.jsonl", "validation.jsonl"):
        rows = [line for line in demo_path(name).read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("task") == "classification"]
        path = folder / f"classification-{name}"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths[0], paths[1]


def train_one(name: str, runs: Path, steps: int, batch_size: int, max_length: int, eval_rows: int,
              extra: list[str] | None = None, data: tuple[str, str] | None = None) -> dict:
    """One method (or recipe: ``extra`` arguments, ``data`` files) in a fresh ``python -m core train`` process;
    its --json document plus the run folder."""
    out = runs / f"bench-{name}"
    train, val = data or (str(demo_path("train.jsonl")), str(demo_path("validation.jsonl")))
    command = [sys.executable, "-m", "core", "train", "--data", train, "--val-data", val, "--max-steps", str(steps),
               "--batch-size", str(batch_size), "--max-length", str(max_length), "--eval-every", str(steps),
               "--checkpoint-every", str(steps), "--max-eval-examples", str(eval_rows), "--out", str(out), "--json"]
    command += extra if extra is not None else ["--method", name]
    if name in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        command += ["--set", "num_virtual_tokens=20"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        return {"method": name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(done.stdout)
    result["process_s"] = round(time.perf_counter() - start, 1)
    if extra is not None:
        result["recipe"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two methods, one step, two test rows")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--methods", default=",".join(METHODS), help="methods, or '' for none")
    parser.add_argument("--recipes", default="", help=f"also: {', '.join(RECIPES)} (the other objectives, hybrids)")
    parser.add_argument("--eval-rows", type=int, default=30, help="first N rows of the demo test set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--workspace", help="keep runs and the evaluation here (e.g. workspace)")
    parser.add_argument("--result", default="methods", help="bench/results/<name>.json to write (default: methods)")
    args = parser.parse_args()
    if args.smoke:
        args.methods, args.steps, args.batch_size, args.max_length = "lora,ia3", 1, 2, 128
        args.eval_rows, args.max_new_tokens = 2, 4
    methods = [name for name in args.methods.split(",") if name]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    recipes = [name for name in args.recipes.split(",") if name]
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")

    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="bench-methods-"))
    from core.engine import Engine

    engine = Engine(root)
    rows, start = [], time.perf_counter()
    try:
        jobs = [(method, None, None) for method in methods]
        for recipe in recipes:
            extra, data = RECIPES[recipe]
            jobs.append((recipe, extra, _classification_rows(root) if data == CLASSIFICATION_ONLY else None))
        for name, extra, data in jobs:
            trained = train_one(name, engine.workspace.runs, args.steps, args.batch_size, args.max_length,
                                8 if args.smoke else 32, extra, data)
            rows.append(trained)
            print(f"{name}: " + (trained.get("error") or f"{trained['tokens_per_s']:.0f} tokens/s, val loss "
                                 f"{trained['final_val_loss']:.3f}, {trained['process_s']} s"), flush=True)
        quality = evaluate(engine, [row for row in rows if "error" not in row], args)
    finally:
        if not args.workspace:
            shutil.rmtree(root, ignore_errors=True)

    table = []
    for row in rows:
        run_id = Path(row["run_dir"]).name if "run_dir" in row else None
        scores = quality["by_run"].get(run_id, {})
        if row.get("objective") == "classification":  # a label head answers every row with a label: ROUGE is moot
            scores = {"accuracy": scores.get("accuracy")}
        table.append({
            "method": row.get("recipe") or row["method"], "objective": row.get("objective", "sft"),
            "trainable": row.get("trainable_params"),
            "trainable_%": row.get("trainable_percent"), "weights_MB": _mb(row.get("adapter_bytes")),
            "peak_mem_MiB": _mib(row.get("peak_mem_bytes")), "train_s": row.get("wall_s"),
            "tokens_per_s": row.get("tokens_per_s"), "val_loss_first": row.get("first_val_loss"),
            "val_loss": row.get("final_val_loss"), "rougeL": scores.get("rougeL"),
            "accuracy": scores.get("accuracy"), "val_accuracy": row.get("val_accuracy"),
            "decode_speedup": row.get("decode_speedup"), "error": row.get("error")})
    table.append({"method": "(base, zero_shot)", "rougeL": quality["zero_shot"].get("rougeL"),
                  "accuracy": quality["zero_shot"].get("accuracy")})
    print_table(table, ["method", "objective", "trainable_%", "weights_MB", "peak_mem_MiB", "train_s", "tokens_per_s",
                        "val_loss", "rougeL", "accuracy", "error"])
    path = write_result(args.result, {
        "settings": {"steps": args.steps, "recipes": recipes, "batch_size": args.batch_size,
                     "max_length": args.max_length,
                     "data": "assets/demo/train.jsonl", "validation": "assets/demo/validation.jsonl (first 32)",
                     "test_rows": args.eval_rows, "max_new_tokens": args.max_new_tokens, "lr": "each method's default",
                     "load_average_at_start": list(os.getloadavg())},
        "rows": table, "eval_wall_s": quality["wall_s"], "wall_s": round(time.perf_counter() - start, 1)},
        smoke=args.smoke)
    print(f"wrote {path}")


def evaluate(engine, trained: list[dict], args: argparse.Namespace) -> dict:
    """zero_shot plus one finetuned@<run> variant per trained run, side by side on the first test rows."""
    from core.arena import ArenaConfig
    from core.inference import GenerationConfig

    if not trained:
        return {"by_run": {}, "zero_shot": {}, "wall_s": 0.0}
    config = ArenaConfig(variants=["zero_shot", "finetuned"], adapters=[row["run_dir"] for row in trained],
                         generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    result = engine.evaluate(demo_path("test.jsonl"), config, limit=args.eval_rows)
    means = result.means()

    def pick(variant: str) -> dict:
        overall = means.get(variant, {})
        accuracy = result.summary.get(variant, {}).get("classification", {}).get("accuracy", {})
        return {"rougeL": overall.get("rougeL"), "accuracy": accuracy.get("mean")}

    by_run = {}
    for row in trained:
        run_id = Path(row["run_dir"]).name
        variant = next((name for name in means if name.startswith("finetuned") and name.endswith(run_id)), None)
        by_run[run_id] = pick(variant) if variant else {}
    return {"by_run": by_run, "zero_shot": pick("zero_shot"), "wall_s": round(result.wall_s, 1)}


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e6, 2)


def _mib(n: int | None) -> int | None:
    return None if n is None else round(n / 2**20)


if __name__ == "__main__":
    main()
