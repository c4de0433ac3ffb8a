"""The GPU check: one prepared script a session lent a GPU machine runs as it is, recording what works on CUDA and how
fast, step by step (a failing step is recorded with its one-line error and the script goes on).

    python -m bench.gpu [--smoke] [--steps a,b,...] [--budget-s S] [--copy-to DIR]

Not part of ``make bench`` (that runs on CPU). On a lent machine (the device tool copies the working tree there and
brings back only what is under ``$OUT``)::

    python -m bench.gpu --copy-to "$OUT"          # bench/results/gpu.json, and a copy in $OUT

It uses the bundled SmolLM2-135M-Instruct (core.models; no network there) and assets/demo. Steps, with the seconds
each is estimated to take on one H100 (model loads included; none measured yet, the project has not run on CUDA):

- ``a_cuda`` (~2 s): CUDA visible, device name, memory, compute capability, ``torch.cuda.is_bf16_supported()``,
  a bf16 matmul; whether vllm and bitsandbytes are installed (never an error: "not installed").
- ``a_model`` (~35 s on a fresh machine, ~1 s warm): the base model's safetensors cache (GGUF converted once).
- ``b_lora_bf16`` / ``b_lora_fp16`` (~20 s each): LoRA through core.training.train on assets/demo/train.jsonl,
  device cuda, 40 steps x batch 8: losses finite and decreasing (mean of the last 5 steps below the first 5),
  tokens/s, peak GPU memory (torch.cuda.max_memory_allocated); fp16 must take the GradScaler path (counted).
- ``c_qlora`` (~30 s): QLoRA, 4-bit nf4 base (bitsandbytes), bf16 compute, 40 steps: trains, loss finite, peak
  memory against b_lora_bf16's.
- ``e_ours_vs_trl`` (~60 s): bench.train's contenders ``ours`` and ``trl`` (its functions, device cuda), 30 steps x
  batch 8: tokens/s (all steps, and the median step after the first), MFU against the measured bf16 and fp32 matmul
  FLOP/s of this GPU (bench.train's FLOP count per token).
- ``g_data_parallel`` (~60 s with 2+ GPUs; else skipped, "1 GPU: skipped"): ``python -m core train ...
  --num-processes N`` (NCCL) against 1 process, tokens/s.
- ``d_generation`` (~60 s): the Arena's five variants on 3 demo questions through the Engine (as bench.arena):
  one batched generate vs one call per variant, tokens/s; the engine's batch decoder ("auto") vs ``decoder="hf"``.
- ``f_evaluation`` (~60 s): Engine.evaluate over 20 demo test rows x 5 variants (as bench.eval), examples/s and
  generated tokens/s; ``f_evaluation_vllm`` (~120 s, vLLM engine start included; "not installed" without vllm):
  the same with ``decoder="vllm"``, and how many answers equal the batch decoder's.

Estimated total ~6-8 minutes on an H100; ``--budget-s`` (default 540) skips the steps still to come once it is spent.
``--smoke``: on CPU in about a minute, tiny sizes (LoRA training, generation and evaluation run on the CPU to prove
the code paths), the steps that need CUDA skipped with the reason "no CUDA"; written to
bench/results/smoke/gpu.json. Without CUDA and without ``--smoke`` only the ``a_*`` steps run.
"""

from __future__ import annotations

import os

# never download anything: every model and dataset here is local
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import print_table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEPS = ("a_cuda", "a_model", "b_lora_bf16", "b_lora_fp16", "c_qlora", "e_ours_vs_trl", "g_data_parallel",
         "d_generation", "f_evaluation", "f_evaluation_vllm")
ESTIMATE_H100_S = {"a_cuda": 2, "a_model": 35, "b_lora_bf16": 20, "b_lora_fp16": 20, "c_qlora": 30,
                   "e_ours_vs_trl": 60, "g_data_parallel": 60, "d_generation": 60, "f_evaluation": 60,
                   "f_evaluation_vllm": 120}
NO_CUDA = "no CUDA"


class Skip(Exception):
    """A step that cannot run here; its message is the recorded reason."""


@dataclass
class Sizes:
    train_steps: int
    batch_size: int
    max_length: int
    trl_steps: int
    queries: int
    variants: list[str]
    max_new_tokens: int
    eval_rows: int
    eval_tokens: int
    max_batch_size: int


@dataclass
class Context:
    smoke: bool
    cuda: bool
    device: str
    work: Path
    sizes: Sizes
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _engine: Any = None
    _demo: tuple[Path | None, Path] | None = None

    def engine(self) -> Any:
        """One Engine for the generation steps (its host, adapters and vLLM engine are shared between them)."""
        if self._engine is None:
            from core.engine import Engine

            self._engine = Engine(self.work / "workspace")
        return self._engine

    def demo(self) -> tuple[Path | None, Path]:
        """The demo knowledge base (when a variant needs it) and the demo LoRA run, installed once."""
        if self._demo is None:
            engine = self.engine()
            index = engine.ensure_demo_index() if {"rag", "finetuned_rag"} & set(self.sizes.variants) else None
            self._demo = (index, engine.install_demo_run())
        return self._demo


def _line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:400]


def _need_cuda(ctx: Context) -> None:
    if not ctx.cuda:
        raise Skip(NO_CUDA)


def _mib(value: float | int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _train_file(ctx: Context) -> Path:
    """The demo train file (smoke: its first rows only, to keep data preparation short)."""
    from core.data import demo_path

    source = demo_path("train.jsonl")
    if not ctx.smoke:
        return source
    small = ctx.work / "train-small.jsonl"
    if not small.exists():
        lines = source.read_text(encoding="utf-8").splitlines()[: ctx.sizes.batch_size * ctx.sizes.train_steps * 2]
        small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return small


# --------------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------------


def step_cuda(ctx: Context) -> dict[str, Any]:
    import torch

    def installed(package: str) -> str:
        if importlib.util.find_spec(package) is None:
            return "not installed"
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "installed (version unknown)"

    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "device_count": torch.cuda.device_count(),
                           "vllm": installed("vllm"), "bitsandbytes": installed("bitsandbytes"),
                           "lm_eval": installed("lm_eval"), "trl": installed("trl")}
    if not out["cuda_available"]:
        return out
    props = torch.cuda.get_device_properties(0)
    out.update(device_name=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
               bf16_supported=bool(torch.cuda.is_bf16_supported()),
               devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    product = (a @ a).float()
    out["bf16_matmul_finite"] = bool(torch.isfinite(product).all())
    return out


def step_model(ctx: Context) -> dict[str, Any]:
    from core.models import is_complete_cache, loadable_location, resolve_base_model

    resolved = resolve_base_model(None)
    cached = resolved.cache_dir is None or is_complete_cache(resolved.cache_dir)
    began = time.perf_counter()
    folder = loadable_location(resolved)
    return {"model": resolved.name, "kind": resolved.kind, "cached_before": cached, "folder": folder,
            "prepare_s": round(time.perf_counter() - began, 2)}


def _train(ctx: Context, *, method: str, dtype: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One core.training run on the demo data: losses, speed and peak memory."""
    from core.training import TrainingConfig, train

    sizes = ctx.sizes
    config = TrainingConfig(data=str(_train_file(ctx)), method=method, val_fraction=0.0,
                            method_config={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": TARGETS,
                                           **(extra or {})},
                            max_steps=sizes.train_steps, batch_size=sizes.batch_size, max_length=sizes.max_length,
                            device=ctx.device, dtype=dtype, checkpoint_every=sizes.train_steps, keep_checkpoints=1,
                            seed=42)
    result = train(config, runs_root=ctx.work / "runs")
    losses = [float(x) for x in result.train_loss]
    head = losses[: max(1, min(5, len(losses) // 2))]
    tail = losses[-len(head):]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    return {"device": result.device, "dtype": result.dtype, "steps": result.steps, "state": result.state,
            "first_loss": round(losses[0], 4) if losses else None,
            "final_train_loss": None if result.final_train_loss is None else round(result.final_train_loss, 4),
            "loss_first_mean": round(statistics.fmean(head), 4) if head else None,
            "loss_last_mean": round(statistics.fmean(tail), 4) if tail else None,
            "loss_finite": finite, "loss_decreasing": finite and statistics.fmean(tail) < statistics.fmean(head),
            "tokens_per_s": round(result.tokens_per_s, 1), "peak_mem_mib": _mib(result.peak_mem_bytes),
            "peak_mem_kind": "cuda max_memory_allocated" if result.device.startswith("cuda") else "process RSS",
            "trainable_params": result.trainable_params, "wall_s": round(result.wall_s, 2)}


def step_lora_bf16(ctx: Context) -> dict[str, Any]:
    import torch

    if ctx.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16 support (torch.cuda.is_bf16_supported() is False)")
    return _train(ctx, method="lora", dtype="bf16")


def step_lora_fp16(ctx: Context) -> dict[str, Any]:
    _need_cuda(ctx)  # the GradScaler path is CUDA's
    import torch

    original = torch.amp.GradScaler
    counts = {"made": 0, "steps": 0}
    made: list[Any] = []

    class CountingScaler(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            counts["made"] += 1
            made.append(self)

        def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            counts["steps"] += 1
            return super().step(optimizer, *args, **kwargs)

    torch.amp.GradScaler = CountingScaler  # the training loop makes its scaler as torch.amp.GradScaler("cuda")
    try:
        out = _train(ctx, method="lora", dtype="fp16")
    finally:
        torch.amp.GradScaler = original
    out.update(grad_scaler_used=counts["made"] > 0, grad_scaler_steps=counts["steps"],
               grad_scaler_final_scale=float(made[-1].get_scale()) if made else None)
    return out


def step_qlora(ctx: Context) -> dict[str, Any]:
    _need_cuda(ctx)  # bitsandbytes' 4-bit kernels are what is checked here
    out = _train(ctx, method="qlora", dtype="bf16", extra={"bits": 4, "quant_type": "nf4"})
    lora = ctx.results.get("b_lora_bf16", {})
    if lora.get("peak_mem_mib") and out.get("peak_mem_mib"):
        out["peak_mem_vs_lora_bf16"] = round(out["peak_mem_mib"] / lora["peak_mem_mib"], 3)
        out["tokens_per_s_vs_lora_bf16"] = round(out["tokens_per_s"] / lora["tokens_per_s"], 3)
    return out


def step_ours_vs_trl(ctx: Context) -> dict[str, Any]:
    """bench.train's contenders on this device, through its own functions."""
    if not ctx.cuda:
        raise Skip(f"{NO_CUDA} (on CPU: python -m bench.train)")
    import torch

    from bench import train as bench_train
    from core.data import encode_for_training, load_examples
    from core.models import loadable_location, resolve_base_model

    sizes = ctx.sizes
    settings = bench_train.Settings(steps=sizes.trl_steps, batch_size=sizes.batch_size, lr=2e-4, r=8, alpha=16,
                                    dropout=0.05, seed=42, max_length=sizes.max_length, val_rows=0,
                                    matmul_n=1024 if ctx.smoke else 8192, matmul_repeats=3 if ctx.smoke else 5,
                                    device=ctx.device)
    train_file = _train_file(ctx)
    examples = load_examples(train_file).examples
    model_dir = loadable_location(resolve_base_model(None))
    folder = ctx.work / "ours-vs-trl"
    folder.mkdir(exist_ok=True)
    outcomes = [bench_train.run_ours(settings, train_file, folder)]
    if ctx.cuda:
        torch.cuda.empty_cache()
    outcomes.append(bench_train.run_trl(settings, examples, model_dir, folder))
    base = bench_train._fresh_base()
    encoded = [encode_for_training(base.tokenizer, ex, None, settings.max_length) for ex in examples]
    lengths = [len(e.input_ids) for e in encoded]
    answer_share = sum(e.answer_tokens for e in encoded) / sum(lengths)
    lora_params = sum(settings.r * (m.in_features + m.out_features) for name, m in base.model.named_modules()
                      if name.rsplit(".", 1)[-1] in TARGETS)
    flops = bench_train.flop_terms(base.model, lengths, answer_share, lora_params)
    del base
    sample_s = 0.05 if ctx.smoke else 0.25
    peaks = {name: bench_train.matmul_flops(dtype, settings.matmul_n, settings.matmul_repeats, sample_s,
                                            device=ctx.device)["best"]
             for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    rows = {}
    for outcome in outcomes:
        rate = outcome.tokens / outcome.train_s if outcome.train_s else 0.0
        later = sorted(n / sec for sec, n in outcome.per_step[1:] if sec > 0) or [rate]
        median = later[len(later) // 2]
        rows[outcome.name] = {
            "tokens_per_s": round(rate, 1), "tokens_per_s_median_step": round(median, 1),
            "first_step_s": round(outcome.per_step[0][0], 3) if outcome.per_step else None,
            "final_train_loss": outcome.final_train_loss, "compute_dtype": outcome.compute_dtype,
            "peak_mem_mib": _mib(outcome.peak_rss_bytes), "setup_s": outcome.setup_s,
            "mfu_bf16": round(rate * flops["flops_per_token"] / peaks["bf16"], 5),
            "mfu_bf16_median_step": round(median * flops["flops_per_token"] / peaks["bf16"], 5),
            "mfu_required_bf16": round(rate * flops["flops_per_token_required"] / peaks["bf16"], 5),
            "mfu_fp32": round(rate * flops["flops_per_token"] / peaks["fp32"], 5)}
    ours, trl = rows["ours"], rows["trl"]
    return {"device": ctx.device, "steps": settings.steps, "batch_size": settings.batch_size,
            "contenders": rows, "speedup_vs_trl": round(ours["tokens_per_s"] / trl["tokens_per_s"], 3)
            if trl["tokens_per_s"] else None,
            "speedup_vs_trl_median_step": round(ours["tokens_per_s_median_step"] / trl["tokens_per_s_median_step"], 3)
            if trl["tokens_per_s_median_step"] else None,
            "matmul_tflops": {name: round(value / 1e12, 2) for name, value in peaks.items()},
            "matmul_n": settings.matmul_n, "flops_per_token": flops["flops_per_token"],
            "flops_per_token_required": flops["flops_per_token_required"]}


def step_data_parallel(ctx: Context) -> dict[str, Any]:
    import torch

    _need_cuda(ctx)
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise Skip(f"{gpus} GPU: skipped")
    runs = {}
    for processes in (1, gpus):
        out = ctx.work / f"dp-{processes}"
        command = [sys.executable, "-m", "core", "train", "--data", str(_train_file(ctx)), "--method", "lora",
                   "--max-steps", str(ctx.sizes.train_steps), "--batch-size", str(ctx.sizes.batch_size),
                   "--val-fraction", "0", "--device", "cuda", "--num-processes", str(processes), "--out", str(out),
                   "--json"]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        wall = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{processes} processes: exit {done.returncode}: "
                               f"{(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        text = done.stdout
        result = json.loads(text[text.index("{"):])
        runs[str(processes)] = {"tokens_per_s": result.get("tokens_per_s"), "world_size": result.get("world_size"),
                                "final_train_loss": result.get("final_train_loss"), "wall_s": round(wall, 1),
                                "global_batch": ctx.sizes.batch_size * processes}
    one, many = runs["1"]["tokens_per_s"], runs[str(gpus)]["tokens_per_s"]
    return {"gpus": gpus, "runs": runs, "scaling": round(many / one, 3) if one and many else None,
            "ideal_scaling": gpus}


def _arena_setup(ctx: Context, decoder: str) -> tuple[Any, Any, Any, Any]:
    """(engine, host, ArenaConfig, context) for the demo variants with ``decoder``."""
    from core.arena import ArenaConfig
    from core.inference import GenerationConfig

    engine = ctx.engine()
    index, run_dir = ctx.demo()
    generation = GenerationConfig(max_new_tokens=ctx.sizes.max_new_tokens, decoder=decoder)
    config = ArenaConfig(variants=ctx.sizes.variants, adapters=[str(run_dir)], index=str(index) if index else None,
                         generation=generation)
    return engine, engine.host(), config, engine.arena_context(config)


def step_generation(ctx: Context) -> dict[str, Any]:
    """The Arena's variants on demo questions: one batched generate vs one call per variant (bench.arena's own
    functions), with the engine's batch decoder and with decoder "hf"."""
    from bench.arena import _batched, _one_by_one, arena_prompts
    from core.data import demo_path, load_examples

    queries = [ex for ex in load_examples(demo_path("test.jsonl")).examples if ex.output][: ctx.sizes.queries]
    by_decoder: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for decoder in ("auto", "hf"):
        engine, host, config, context = _arena_setup(ctx, decoder)
        engine.arena(queries[0].instruction, config, input_text=queries[0].input)  # warm-up
        totals = {"batched_s": 0.0, "single_s": 0.0, "batched_tokens": 0, "single_tokens": 0, "rows": 0,
                  "identical": 0, "engine_s": 0.0}
        answers[decoder] = []
        for example in queries:
            _, prompts, keys, engine_s = arena_prompts(engine, context, config, example)
            totals["engine_s"] += engine_s
            batched, batched_s = _batched(host, prompts, keys, config.generation, config.max_batch_size)
            single, single_s = _one_by_one(host, prompts, keys, config.generation)
            totals["batched_s"] += batched_s
            totals["single_s"] += single_s
            totals["batched_tokens"] += sum(o.new_tokens for o in batched)
            totals["single_tokens"] += sum(o.new_tokens for o in single)
            totals["rows"] += len(prompts)
            totals["identical"] += sum(b.text == s.text for b, s in zip(batched, single, strict=True))
            answers[decoder] += [o.text for o in batched]
        by_decoder[decoder] = {
            "batched_s": round(totals["batched_s"], 3), "one_by_one_s": round(totals["single_s"], 3),
            "speedup": round(totals["single_s"] / totals["batched_s"], 2) if totals["batched_s"] else None,
            "batched_tokens_per_s": round(totals["batched_tokens"] / totals["batched_s"], 1)
            if totals["batched_s"] else None,
            "one_by_one_tokens_per_s": round(totals["single_tokens"] / totals["single_s"], 1)
            if totals["single_s"] else None,
            "rows": totals["rows"], "identical_batched_vs_single": totals["identical"],
            "engine_arena_s": round(totals["engine_s"], 3)}
    host = ctx.engine().host()
    auto, hf = by_decoder["auto"], by_decoder["hf"]
    return {"device": host.base.device, "dtype": str(host.base.dtype), "queries": len(queries),
            "variants": ctx.sizes.variants, "max_new_tokens": ctx.sizes.max_new_tokens, "decoders": by_decoder,
            "batch_decoder_vs_hf": round(auto["batched_tokens_per_s"] / hf["batched_tokens_per_s"], 2)
            if auto["batched_tokens_per_s"] and hf["batched_tokens_per_s"] else None,
            "identical_auto_vs_hf": sum(a == b for a, b in zip(answers["auto"], answers["hf"], strict=True))}


def _evaluate(ctx: Context, decoder: str) -> tuple[dict[str, Any], list[str]]:
    """Engine.evaluate over the first demo test rows with every variant: throughput figures and the answers."""
    import torch

    from core.arena import ArenaConfig
    from core.data import demo_path
    from core.inference import GenerationConfig

    engine = ctx.engine()
    index, run_dir = ctx.demo()
    config = ArenaConfig(variants=ctx.sizes.variants, adapters=[str(run_dir)], index=str(index) if index else None,
                         generation=GenerationConfig(max_new_tokens=ctx.sizes.eval_tokens, decoder=decoder),
                         max_batch_size=ctx.sizes.max_batch_size)
    data = demo_path("test.jsonl")
    began = time.perf_counter()
    engine.evaluate(data, config, out=ctx.work / "evals" / f"warm-{decoder}", limit=1)
    warm_s = time.perf_counter() - began
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = engine.evaluate(data, config, out=ctx.work / "evals" / decoder, limit=ctx.sizes.eval_rows)
    available = [row for row in result.rows if row.get("available", True)]
    tokens = sum(int(row.get("new_tokens") or 0) for row in available)
    cells = result.n * len(result.variants)
    means = result.means()
    out = {"decoder": decoder, "examples": result.n, "cells": cells, "available_cells": len(available),
           "max_new_tokens": ctx.sizes.eval_tokens, "max_batch_size": ctx.sizes.max_batch_size,
           "wall_s": round(result.wall_s, 2), "generate_s": round(result.generate_s, 2),
           "metrics_s": round(result.metrics_s, 2),
           "examples_per_s": round(result.n / result.wall_s, 3) if result.wall_s else None,
           "cells_per_s": round(cells / result.wall_s, 3) if result.wall_s else None,
           "new_tokens": tokens, "tokens_per_s": round(tokens / result.generate_s, 1) if result.generate_s else None,
           "first_eval_s": round(warm_s, 2),
           "rougeL": {variant: None if (means.get(variant) or {}).get("rougeL") is None
                      else round(means[variant]["rougeL"], 4) for variant in result.variants}}
    if torch.cuda.is_available():
        out["peak_vram_mib"] = _mib(torch.cuda.max_memory_allocated())
    order = sorted(available, key=lambda row: (str(row.get("id")), row["variant"]))
    return out, [str(row.get("answer", "")) for row in order]


def step_evaluation(ctx: Context) -> dict[str, Any]:
    figures, answers = _evaluate(ctx, "auto")
    ctx.results.setdefault("_answers", {})["auto"] = answers
    return figures


def step_evaluation_vllm(ctx: Context) -> dict[str, Any]:
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm: not installed")
    _need_cuda(ctx)
    figures, answers = _evaluate(ctx, "vllm")
    generator = getattr(ctx.engine().host(), "_vllm", None)
    figures["vllm_engine_start_s"] = round(generator.load_s, 1) if generator is not None else None
    figures["vllm"] = importlib.metadata.version("vllm")
    reference = (ctx.results.get("_answers") or {}).get("auto")
    if reference and len(reference) == len(answers):
        figures["answers_equal_to_batch_decoder"] = sum(a == b for a, b in zip(reference, answers, strict=True))
    baseline = ctx.results.get("f_evaluation", {})
    if baseline.get("tokens_per_s") and figures.get("tokens_per_s"):
        figures["tokens_per_s_vs_batch_decoder"] = round(figures["tokens_per_s"] / baseline["tokens_per_s"], 2)
        figures["examples_per_s_vs_batch_decoder"] = round(figures["examples_per_s"] / baseline["examples_per_s"], 2)
    return figures


RUNNERS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "a_cuda": ("CUDA, device, memory, bf16", step_cuda),
    "a_model": ("base model cache", step_model),
    "b_lora_bf16": ("LoRA bf16 training", step_lora_bf16),
    "b_lora_fp16": ("LoRA fp16 training (GradScaler)", step_lora_fp16),
    "c_qlora": ("QLoRA 4-bit nf4 training", step_qlora),
    "e_ours_vs_trl": ("ours vs TRL tokens/s, MFU", step_ours_vs_trl),
    "g_data_parallel": ("data-parallel training", step_data_parallel),
    "d_generation": ("arena generation", step_generation),
    "f_evaluation": ("evaluation throughput", step_evaluation),
    "f_evaluation_vllm": ("evaluation through vLLM", step_evaluation_vllm),
}


def run_step(name: str, ctx: Context, deadline: float) -> dict[str, Any]:
    """One step, isolated: figures, or the reason it was skipped, or its one-line error."""
    from core.training import release_memory

    title, runner = RUNNERS[name]
    record: dict[str, Any] = {"step": name, "title": title, "status": "ok", "reason": None,
                              "estimate_h100_s": ESTIMATE_H100_S[name]}
    began = time.perf_counter()
    if began > deadline:
        record.update(status="skipped", reason="time budget spent before this step", seconds=0.0)
        return record
    print(f"[{name}] {title}", file=sys.stderr, flush=True)
    try:
        record["figures"] = runner(ctx)
        ctx.results[name] = record["figures"]
    except Skip as skip:
        record.update(status="skipped", reason=str(skip))
    except Exception as err:  # one failing step is recorded and the script goes on
        logging.getLogger(__name__).debug("step %s failed", name, exc_info=True)
        record.update(status="error", reason=_line(err))
    finally:
        release_memory()
    record["seconds"] = round(time.perf_counter() - began, 2)
    print(f"[{name}] {record['status']} in {record['seconds']} s" + (f": {record['reason']}" if record["reason"]
                                                                      else ""), file=sys.stderr, flush=True)
    return record


def _summary(record: dict[str, Any]) -> str:
    """The step's headline figures in a few words, for the table."""
    f = record.get("figures") or {}
    name = record["step"]
    if name == "a_cuda":
        return (f"{f.get('device_name') or 'no GPU'}, {f.get('memory_gib')} GiB, bf16 {f.get('bf16_supported')}, "
                f"vllm {f.get('vllm')}")
    if name == "a_model":
        return f"{f.get('model')} ({'cached' if f.get('cached_before') else 'converted'} {f.get('prepare_s')} s)"
    if name.startswith(("b_", "c_")):
        extra = f", scaler steps {f.get('grad_scaler_steps')}" if "grad_scaler_steps" in f else ""
        extra += f", mem x{f['peak_mem_vs_lora_bf16']} vs LoRA" if "peak_mem_vs_lora_bf16" in f else ""
        return (f"{f.get('tokens_per_s')} tok/s, loss {f.get('loss_first_mean')}->{f.get('loss_last_mean')}, "
                f"peak {f.get('peak_mem_mib')} MiB{extra}")
    if name == "e_ours_vs_trl":
        c = f.get("contenders") or {}
        return (f"ours {c.get('ours', {}).get('tokens_per_s')} / TRL {c.get('trl', {}).get('tokens_per_s')} tok/s "
                f"(x{f.get('speedup_vs_trl')}), MFU bf16 ours {c.get('ours', {}).get('mfu_bf16')}")
    if name == "g_data_parallel":
        return f"{f.get('gpus')} GPUs: x{f.get('scaling')} tokens/s"
    if name == "d_generation":
        d = f.get("decoders") or {}
        return (f"batched {d.get('auto', {}).get('batched_tokens_per_s')} tok/s (x{d.get('auto', {}).get('speedup')}"
                f" vs one-by-one), hf {d.get('hf', {}).get('batched_tokens_per_s')} tok/s")
    if name.startswith("f_"):
        return f"{f.get('examples_per_s')} ex/s, {f.get('tokens_per_s')} tok/s, {f.get('cells')} cells"
    return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, CUDA-only steps skipped (~1 min)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="seconds after which the steps still to come are skipped (default 540)")
    parser.add_argument("--copy-to", default=os.environ.get("OUT") or None,
                        help="also copy the result file into this folder (default: $OUT when set)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown[0]!r}")
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if args.smoke:
        sizes = Sizes(train_steps=2, batch_size=2, max_length=128, trl_steps=2, queries=1,
                      variants=["zero_shot", "finetuned"], max_new_tokens=4, eval_rows=2, eval_tokens=4,
                      max_batch_size=8)
    else:
        sizes = Sizes(train_steps=40, batch_size=8, max_length=512, trl_steps=30, queries=3, variants=VARIANTS,
                      max_new_tokens=48, eval_rows=20, eval_tokens=64, max_batch_size=32)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    ctx = Context(smoke=args.smoke, cuda=cuda, device="cuda" if cuda else "cpu", work=work, sizes=sizes)
    records = []
    try:
        for name in [step for step in STEPS if step in names]:
            if not cuda and not args.smoke and name not in ("a_cuda", "a_model"):
                records.append({"step": name, "title": RUNNERS[name][0], "status": "skipped", "reason": NO_CUDA,
                                "estimate_h100_s": ESTIMATE_H100_S[name], "seconds": 0.0})
                continue
            records.append(run_step(name, ctx, started + args.budget_s))
    finally:
        ctx._engine = None
        shutil.rmtree(work, ignore_errors=True)
    payload = {"device": ctx.device, "sizes": sizes.__dict__, "steps": records,
               "ok": sum(r["status"] == "ok" for r in records),
               "errors": sum(r["status"] == "error" for r in records),
               "skipped": sum(r["status"] == "skipped" for r in records),
               "estimate_h100_total_s": sum(ESTIMATE_H100_S[r["step"]] for r in records),
               "wall_s": round(time.perf_counter() - started, 1)}
    print()
    print_table([{"step": r["step"], "status": r["status"], "s": r["seconds"], "est. H100 s": r["estimate_h100_s"],
                  "figures / reason": r["reason"] if r["reason"] else _summary(r)} for r in records])
    path = write_result("gpu", payload, smoke=args.smoke)
    print(f"\nwrote {path} ({payload['wall_s']} s; {payload['ok']} ok, {payload['skipped']} skipped, "
          f"{payload['errors']} errors)")
    if args.copy_to:
        target = Path(args.copy_to)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)
        print(f"copied to {target / path.name}")
    return payload


if __name__ == "__main__":
    main()
