"""Every training method on the same data and steps: the cost-versus-quality table behind the Runs tab's chart.

    python -m bench.methods [--smoke] [--steps N] [--methods lora,full,...] [--recipes head,distil-half,...]
                            [--eval-rows N] [--workspace DIR] [--trl-dpo [--dpo-steps N]]

Each method trains in its own process (``python -m core train --json``, so peak memory is that method's alone) on the
demo train set for the same number of optimizer steps and batch size, with the method's default settings and
learning rate, and the demo validation set (first 32 rows) for the validation loss. Then one in-process evaluation
runs every trained run side by side (``finetuned@<run>`` variants plus ``zero_shot`` as the reference point) on the
first N rows of the demo test set: ROUGE-L over all rows, accuracy on the classification rows.

Recipes (``--recipes``, none by default) add the other objectives and the hybrids with the same columns: ``head``
(the sentiment-head preset: a classification head on all-MiniLM-L6-v2, trained on the demo train set's classification
rows and scored on accuracy only), ``distil-half`` (a half-depth student distilled from the base), ``mpt``
(multi-task prompt tuning over the three demo tasks), ``full-lr-decay``, ``freeze-gradual``, ``lora-top2`` and
``dpo`` (the dpo preset on assets/demo/preferences.jsonl, a fifth of its pairs held out: validation reward accuracy
and margin at step 0 and at the end, and how often the model gives the chosen answer the higher log-prob, before
and after).

``--trl-dpo``: our DPO loop against TRL's DPOTrainer (``compare_dpo``) on the same 60 demo pairs, same base model
(the bundled SmolLM2-135M-Instruct), LoRA settings (r 8, alpha 16, no dropout, the 7 projections), beta, learning
rate, seed, batch of pairs and steps, each contender in its own process: ``ours`` (core.training, reference log-probs
computed once before the first step), ``trl`` (a DPOConfig with TRL's defaults but for the settings above, logging
every step, no reporting, no saving and use_cpu; the reference is the base with the adapter disabled, one extra
no-grad forward per step) and ``trl-precompute`` (the same with ``precompute_ref_log_probs=True``, TRL's
compute-once reference). Tokens/s: non-padding tokens of the policy's forward and backward (the 2B chosen and
rejected rows of each step) over the training phase; peak memory: RSS sampled during training, and the process's
peak (model load and reference pass included).

Columns: trainable params (and %), saved weights in bytes, peak memory (RSS on CPU, max allocated on CUDA), training
wall time (model load included), tokens/s (answer and prompt tokens through forward and backward), final validation
loss, test ROUGE-L and accuracy. With ``--workspace`` the runs and the evaluation stay there (``workspace`` puts them
in the app's Runs tab); by default they go to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import print_table, write_result
from core.data import demo_path
from core.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


CLASSIFICATION_ONLY = "classification-rows"  # a recipe trained and validated on the demo's classification rows
PREFERENCES = "preferences"  # a recipe trained on assets/demo/preferences.jsonl, validated on its own held-out pairs

# name -> (extra `train` arguments, data); the method's or preset's own settings otherwise
RECIPES: dict[str, tuple[list[str], str | None]] = {
    "head": (["--preset", "sentiment-head"], CLASSIFICATION_ONLY),
    "distil-half": (["--preset", "distil-half"], None),
    "mpt": (["--preset", "mpt"], None),
    "full-lr-decay": (["--method", "full", "--layerwise-lr-decay", "0.8"], None),
    "freeze-gradual": (["--method", "freeze", "--set", "trainable_layers=4", "--gradual-unfreezing", "5"], None),
    "lora-top2": (["--method", "lora", "--set", "unfreeze_top=2"], None),
    "dpo": (["--preset", "dpo"], PREFERENCES),
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


def _preference_pairs(folder: Path, limit: int | None = None) -> str:
    """assets/demo/preferences.jsonl, or its first ``limit`` pairs written to ``folder``."""
    if limit is None:
        return str(demo_path("preferences.jsonl"))
    lines = demo_path("preferences.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    path = folder / "preferences.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def train_one(name: str, runs: Path, steps: int | None, batch_size: int | None, max_length: int, eval_rows: int,
              extra: list[str] | None = None, data: tuple[str, str | None] | None = None) -> dict:
    """One method (or recipe: ``extra`` arguments, ``data`` files; no validation file: the run holds some rows
    out) in a fresh ``python -m core train`` process; its --json document plus the run folder (and, for DPO, the
    validation passes' rewards). ``steps`` and ``batch_size`` None: the preset's (validation about 5 times)."""
    out = runs / f"bench-{name}"
    train, val = data or (str(demo_path("train.jsonl")), str(demo_path("validation.jsonl")))
    schedule = [] if steps is None else ["--max-steps", str(steps), "--eval-every", str(steps),
                                         "--checkpoint-every", str(steps)]
    command = [sys.executable, "-m", "core", "train", "--data", train, *(["--val-data", val] if val else []),
               *schedule, *([] if batch_size is None else ["--batch-size", str(batch_size)]),
               "--max-length", str(max_length), "--max-eval-examples", str(eval_rows), "--out", str(out), "--json"]
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
    if result.get("objective") == "dpo":  # the validation passes: step 0 (policy = reference) and the end
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        result["validation"] = [row for row in map(json.loads, lines) if "reward_margin" in row]
    return result


def main() -> None:
    if "--dpo-contender" in sys.argv:  # one contender of the DPO comparison, in a process of its own
        _dpo_contender_main(sys.argv[sys.argv.index("--dpo-contender") + 1:])
        return
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
    parser.add_argument("--trl-dpo", action="store_true", help="also: our DPO loop vs TRL's DPOTrainer (compare_dpo)")
    parser.add_argument("--dpo-steps", type=int, default=24, help="optimizer steps per DPO contender")
    parser.add_argument("--dpo-batch-size", type=int, default=4, help="pairs per step in the DPO comparison")
    parser.add_argument("--dpo-contenders", default=",".join(DPO_CONTENDERS))
    args = parser.parse_args()
    if args.smoke:
        args.methods, args.steps, args.batch_size, args.max_length = "lora,ia3", 1, 2, 128
        args.eval_rows, args.max_new_tokens, args.dpo_steps, args.dpo_batch_size = 2, 4, 2, 2
    methods = [name for name in args.methods.split(",") if name]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    recipes = [name for name in args.recipes.split(",") if name]
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    contenders = [name for name in args.dpo_contenders.split(",") if name] if args.trl_dpo else []
    unknown = [name for name in contenders if name not in DPO_CONTENDERS]
    if unknown:
        parser.error(f"--dpo-contenders: unknown {unknown[0]!r}; choose from {', '.join(DPO_CONTENDERS)}")

    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="bench-methods-"))
    from core.engine import Engine

    engine = Engine(root)
    rows, start = [], time.perf_counter()
    try:
        jobs = [(method, None, None) for method in methods]
        for recipe in recipes:
            extra, data = RECIPES[recipe]
            files = {CLASSIFICATION_ONLY: lambda: _classification_rows(root),
                     PREFERENCES: lambda: (_preference_pairs(root, 12 if args.smoke else None), None)}
            jobs.append((recipe, extra, files[data]() if data else None))
        for name, extra, data in jobs:
            own = data is not None and data[1] is None and not args.smoke  # the preset's steps and batch of pairs
            trained = train_one(name, engine.workspace.runs, None if own else args.steps,
                                None if own else args.batch_size, args.max_length, 8 if args.smoke else 32, extra,
                                data)
            rows.append(trained)
            print(f"{name}: " + (trained.get("error") or f"{trained['tokens_per_s']:.0f} tokens/s, val loss "
                                 f"{trained['final_val_loss']:.3f}, {trained['process_s']} s"), flush=True)
        quality = evaluate(engine, [row for row in rows if "error" not in row], args)
        dpo = compare_dpo(DpoSettings(steps=args.dpo_steps, batch_size=args.dpo_batch_size, seed=42,
                                      pairs=4 if args.smoke else None), contenders) if contenders else None
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
        if row.get("objective") == "dpo":  # the validation pairs at step 0 (policy = reference) and at the end
            first = (row.get("validation") or [{}])[0]
            table[-1].update({
                "steps": row.get("steps"), "reference_s": row.get("reference_s"),
                "val_pairs": row.get("val_pairs"), "reward_accuracy_first": first.get("reward_accuracy"),
                "reward_accuracy": row.get("reward_accuracy"), "reward_margin_first": first.get("reward_margin"),
                "reward_margin": row.get("reward_margin"), "logp_accuracy_first": row.get("reference_logp_accuracy"),
                "logp_accuracy": row.get("logp_accuracy"), "validation_curve": row.get("validation")})
    table.append({"method": "(base, zero_shot)", "rougeL": quality["zero_shot"].get("rougeL"),
                  "accuracy": quality["zero_shot"].get("accuracy")})
    print_table(table, ["method", "objective", "trainable_%", "weights_MB", "peak_mem_MiB", "train_s", "tokens_per_s",
                        "val_loss", "rougeL", "accuracy", "error"])
    path = write_result(args.result, {
        "settings": {"steps": args.steps, "recipes": recipes, "batch_size": args.batch_size,
                     "max_length": args.max_length,
                     "data": "assets/demo/train.jsonl", "validation": "assets/demo/validation.jsonl (first 32)",
                     "test_rows": args.eval_rows, "max_new_tokens": args.max_new_tokens, "lr": "each method's default",
                     **({"dpo_recipe": "the dpo preset's own epochs, batch and learning rate on "
                                       "assets/demo/preferences.jsonl, a fifth of the pairs held out"}
                        if "dpo" in recipes else {}),
                     "load_average_at_start": list(os.getloadavg())},
        "rows": table, "eval_wall_s": quality["wall_s"], **({"dpo_vs_trl": dpo} if dpo else {}),
        "wall_s": round(time.perf_counter() - start, 1)},
        smoke=args.smoke)
    if dpo is not None:
        print()
        print_table(dpo["rows"], ["contender", "tokens_per_s", "tokens_per_s_median_step", "s_per_step",
                                  "peak_rss_mib", "process_peak_rss_mib", "reference_s", "setup_s",
                                  "train_loss_last_quarter", "fit_loss", "fit_reward_accuracy", "x_ours",
                                  "error"])
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
        if variant is None and len(trained) == 1 and "finetuned" in means:  # one run: its variant has no @run
            variant = "finetuned"
        by_run[run_id] = pick(variant) if variant else {}
    return {"by_run": by_run, "zero_shot": pick("zero_shot"), "wall_s": round(result.wall_s, 1)}


# --------------------------------------------------------------------------------------------------------------------
# DPO: our loop vs TRL's DPOTrainer (--trl-dpo)
# --------------------------------------------------------------------------------------------------------------------

DPO_CONTENDERS = ("ours", "trl", "trl-precompute")
DPO_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class DpoSettings:
    """What every DPO contender shares (the pairs: assets/demo/preferences.jsonl, all 60 unless ``pairs``)."""

    steps: int
    batch_size: int  # pairs per optimizer step (2x as many sequences)
    seed: int
    lr: float = 2e-4
    beta: float = 0.1
    r: int = 8
    alpha: int = 16
    pairs: int | None = None  # the first N pairs only (smoke runs)


def compare_dpo(settings: DpoSettings, contenders: list[str]) -> dict:
    """Each contender in a fresh process (so peak memory is its own), one after the other; their rows and the
    ratio of each one's tokens/s to ours."""
    rows = []
    for name in contenders:
        print(f"dpo: {name} ({settings.steps} steps of {settings.batch_size} pairs)", flush=True)
        command = [sys.executable, "-m", "bench.methods", "--dpo-contender", name,
                   json.dumps(dataclasses.asdict(settings))]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no output"]
            rows.append({"contender": name, "error": tail[-1], "stderr_tail": tail[-15:]})
            print(f"dpo: {name} failed: {tail[-1]}", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(process_s=round(time.perf_counter() - started, 1), fit_loss=row["fit"]["dpo_loss"],
                   fit_reward_accuracy=row["fit"]["reward_accuracy"], fit_reward_margin=row["fit"]["reward_margin"])
        rows.append(row)
    ours = next((row for row in rows if row["contender"] == "ours" and "error" not in row), None)
    for row in rows:
        if ours and "error" not in row:
            row["x_ours"] = round(row["tokens_per_s"] / ours["tokens_per_s"], 3)
    return {"settings": {**dataclasses.asdict(settings), "data": "assets/demo/preferences.jsonl",
                         "lora_targets": DPO_TARGETS, "lora_dropout": 0.0, "loss": "sigmoid"},
            "tokens_per_s_definition": "non-padding tokens (attention_mask sum) of the policy's forward+backward "
                                       "(chosen and rejected rows) / training-phase seconds; reference passes and "
                                       "model load excluded (reference_s, setup_s)",
            "fit_definition": "dpo_fit: each contender's saved adapter on a fresh fp32 base (eval, no autocast, full "
                              "LM head), reference = the adapter disabled; sigmoid DPO loss, reward accuracy and "
                              "margin over all the pairs; the same function for all",
            "rows": rows}


def _dpo_contender_main(argv: list[str]) -> None:
    """``--dpo-contender NAME SETTINGS_JSON``: train one contender, then score its adapter with ``dpo_fit``; print
    its row as one JSON line."""
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    name, settings = argv[0], DpoSettings(**json.loads(argv[1]))
    work = Path(tempfile.mkdtemp(prefix=f"bench-dpo-{name}-"))
    try:
        trainer = _ours_dpo if name == "ours" else _trl_dpo
        row, adapter = trainer(settings, work, name == "trl-precompute")
        row.update(contender=name, process_peak_rss_mib=_peak_rss_mib(), torch_threads=torch.get_num_threads())
        row["fit"] = dpo_fit(adapter, _preference_pairs(work, settings.pairs), settings.beta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row))


def dpo_fit(adapter: Path, pairs_file: str, beta: float, batch_size: int = 4) -> dict:
    """One function for every contender: its saved adapter on a fresh fp32 copy of the base, eval mode, no
    autocast, the LM head on every position; the reference is the same model with the adapter disabled. Over all the
    pairs: the mean DPO (sigmoid) loss, the reward accuracy and the mean reward margin."""
    import torch
    from peft import PeftModel

    from core.models import load_causal_lm
    from core.training.dpo import collate_pairs, encode_pair, pair_losses, read_pairs, sequence_logps

    base = load_causal_lm(device="cpu", dtype="fp32")
    model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    rows = [encode_pair(base.tokenizer, pair, None, 512) for pair in read_pairs(Path(pairs_file))]
    h, margins = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate_pairs(rows[start : start + batch_size], base.tokenizer.pad_token_id, "cpu")
            policy = sequence_logps(model, batch, False)  # (2B,)
            with model.disable_adapter():
                reference = sequence_logps(model, batch, False)
            chosen, rejected = (policy - reference).chunk(2)
            h.append(chosen - rejected)
            margins.append(beta * (chosen - rejected))
    diffs = torch.cat(h)
    return {"pairs": len(rows), "dpo_loss": round(float(pair_losses(diffs, beta, "sigmoid").mean()), 5),
            "reward_accuracy": round(float((diffs > 0).float().mean()), 4),
            "reward_margin": round(float(torch.cat(margins).mean()), 5)}


def _peak_rss_mib() -> int | None:
    """This process's peak RSS (VmHWM; getrusage's ru_maxrss would carry the parent's peak over exec)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next((line for line in status.read_text().splitlines() if line.startswith("VmHWM:")), None)
    return round(int(line.split()[1]) / 1024) if line else None


def _rates(per_step: list[tuple[float, int]]) -> dict:
    """tokens/s over the training phase, and the median step's (steps 2..N: no first-step warm-up)."""
    seconds, tokens = sum(sec for sec, _ in per_step), sum(n for _, n in per_step)
    later = sorted(n / sec for sec, n in per_step[1:] if sec > 0) or [tokens / seconds]
    return {"steps": len(per_step), "tokens": tokens, "train_s": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2), "tokens_per_s_median_step": round(later[len(later) // 2], 2),
            "s_per_step": round(seconds / len(per_step), 3)}


def _ours_dpo(s: DpoSettings, work: Path, _precompute: bool = True) -> tuple[dict, Path]:
    from core.runs import Run
    from core.training import TrainingConfig, train

    started = time.perf_counter()
    config = TrainingConfig(data=_preference_pairs(work, s.pairs), val_fraction=0.0, objective="dpo",
                            method="lora", method_config={"r": s.r, "alpha": s.alpha, "dropout": 0.0,
                                                          "target_modules": DPO_TARGETS},
                            max_steps=s.steps, batch_size=s.batch_size, learning_rate=s.lr, seed=s.seed,
                            dpo_beta=s.beta)
    result = train(config, runs_root=work / "runs")
    metrics = [row for row in Run(Path(result.run_dir)).metrics() if "loss" in row]
    elapsed = [0.0] + [float(row["elapsed_s"]) for row in metrics]
    seen = [0.0] + [row["tokens_per_s"] * row["elapsed_s"] for row in metrics]  # its running tokens / seconds
    per_step = [(elapsed[i] - elapsed[i - 1], round(seen[i] - seen[i - 1])) for i in range(1, len(elapsed))]
    return {**_rates(per_step), **_losses(result.train_loss), "tokens_per_s_reported": result.tokens_per_s,
            "peak_rss_mib": round(result.peak_mem_bytes / 2**20), "reference_s": result.extras.get("reference_s"),
            "setup_s": round(result.wall_s - elapsed[-1] - (result.extras.get("reference_s") or 0), 2),
            "wall_s": round(time.perf_counter() - started, 2), "compute_dtype": result.dtype,
            "trainable_params": result.trainable_params}, Path(result.run_dir) / "adapter"


def _trl_dpo(s: DpoSettings, work: Path, precompute: bool) -> tuple[dict, Path]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from bench.train import _StepTimer
    from core.models import loadable_location, resolve_base_model
    from core.training.dpo import read_pairs
    from core.training.memory import PeakMemory

    started = time.perf_counter()
    model_dir = loadable_location(resolve_base_model(None))  # the cached safetensors copy of the bundled model
    rows = [{"prompt": [{"role": "user", "content": pair.prompt}],
             "chosen": [{"role": "assistant", "content": pair.chosen}],
             "rejected": [{"role": "assistant", "content": pair.rejected}]}
            for pair in read_pairs(_preference_pairs(work, s.pairs))]
    # TRL's defaults but for: the shared settings, logging every step, no reporting or saving, and use_cpu
    # (TrainingArguments refuses the default bf16=True without a GPU unless use_cpu is set)
    args = DPOConfig(output_dir=str(work / "trl"), max_steps=s.steps, learning_rate=s.lr,
                     per_device_train_batch_size=s.batch_size, seed=s.seed, beta=s.beta, logging_steps=1,
                     report_to="none", save_strategy="no", use_cpu=True, precompute_ref_log_probs=precompute)
    peft_config = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=0.0, target_modules=DPO_TARGETS,
                             task_type="CAUSAL_LM")
    counter = [0]
    timer = _StepTimer(counter)
    before_init = time.perf_counter()
    trainer = DPOTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config,
                         callbacks=[timer])
    init_s = time.perf_counter() - before_init

    def count(module, positional, kwargs) -> None:  # the policy's forward only: the reference's runs without grad
        mask = kwargs.get("attention_mask")
        if module.training and torch.is_grad_enabled() and mask is not None:
            counter[0] += int(mask.sum())

    handle = trainer.model.register_forward_pre_hook(count, with_kwargs=True)
    with PeakMemory("cpu") as memory:
        trainer.train()
    handle.remove()
    per_step = timer.per_step()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    adapter = work / "trl-adapter"
    trainer.model.save_pretrained(str(adapter))
    in_effect = {key: str(getattr(args, key)) for key in (
        "bf16", "gradient_checkpointing", "lr_scheduler_type", "warmup_steps", "max_length", "loss_type",
        "disable_dropout", "precompute_ref_log_probs", "optim", "max_grad_norm")}
    return {**_rates(per_step), "peak_rss_mib": round(memory.peak / 2**20),
            "reference_s": round(init_s, 2) if precompute else None,
            "setup_s": round(before_init - started + (0 if precompute else init_s), 2),
            "wall_s": round(time.perf_counter() - started, 2), **_losses(losses),
            "compute_dtype": "bfloat16" if args.bf16 else "float32", "defaults_in_effect": in_effect,
            "reference": "precomputed once in DPOTrainer.__init__ (reference_s includes dataset preparation)"
            if precompute else "the base with the adapter disabled, one no-grad forward per step (in the step time)"
            }, adapter


def _losses(losses: list[float]) -> dict:
    """The per-step training losses, the last one and the mean of the last quarter (one step's is noisy)."""
    tail = losses[-max(1, len(losses) // 4):]
    return {"train_loss": [round(x, 5) for x in losses], "final_train_loss": round(losses[-1], 5) if losses else None,
            "train_loss_last_quarter": round(sum(tail) / len(tail), 5) if tail else None}


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e6, 2)


def _mib(n: int | None) -> int | None:
    return None if n is None else round(n / 2**20)


if __name__ == "__main__":
    main()
