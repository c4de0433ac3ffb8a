"""The arena's batching, side by side: five variants of one query in one batched generate (the engine's path) vs
the same prompts one per generate call, through the same AdapterHost; then a cold model load (GGUF conversion into an
empty $TUNE_ARENA_HOME) vs a warm one (from the cache).

    python -m bench.arena [--smoke] [--queries N] [--max-new-tokens N] [--skip-cold] [--profile]

Writes bench/results/arena.json (smoke: bench/results/smoke/arena.json). Target: batched >= 2.5x faster than
one-by-one on CPU (generation only, same prompts, greedy; answers compared row by row).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_decoder_option, generation_config, print_table, write_result
from core.arena import ArenaConfig
from core.data import demo_path, load_examples
from core.inference import GenerationConfig

TARGET = 2.5
VARIANTS = ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]

_LOAD_SCRIPT = """
import json, os, sys, time
t0 = time.perf_counter()
from core.models import load_causal_lm, resolve_base_model
t1 = time.perf_counter()
resolved = resolve_base_model()
cached = resolved.is_cached
loaded = load_causal_lm(device=os.environ.get("BENCH_DEVICE") or None)
print(json.dumps({"cached_before": cached, "load_s": loaded.load_s, "import_s": t1 - t0,
                  "process_s": time.perf_counter() - t0, "dtype": str(loaded.dtype), "device": loaded.device}))
"""


def _load_in_subprocess(home: Path) -> dict[str, Any]:
    """load_causal_lm() in a fresh interpreter with TUNE_ARENA_HOME=home; its own timings plus the process wall."""
    import json

    env = {**os.environ, "TUNE_ARENA_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=600, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"model load subprocess failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = wall
    return result


def cold_warm_load() -> dict[str, Any]:
    """Cold: an empty TUNE_ARENA_HOME, so the GGUF is dequantized and cached; warm: the same home again."""
    home = Path(tempfile.mkdtemp(prefix="bench-arena-home-"))
    try:
        cold = _load_in_subprocess(home)
        warm = _load_in_subprocess(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert not cold["cached_before"] and warm["cached_before"], (cold, warm)
    return {"cold_load_s": round(cold["load_s"], 2), "warm_load_s": round(warm["load_s"], 3),
            "cold_over_warm": round(cold["load_s"] / warm["load_s"], 1),
            "cold_process_s": round(cold["subprocess_wall_s"], 2),
            "warm_process_s": round(warm["subprocess_wall_s"], 2),
            "import_s": round(warm["import_s"], 2), "dtype": warm["dtype"], "device": warm["device"]}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def arena_prompts(engine: Any, context: Any, config: ArenaConfig, example: Any) -> tuple[list, list, list, float]:
    """One demo question through the engine's arena, end to end (retrieval, prompts, one batched generate, scoring):
    its answered results, their prompts and adapter keys (to regenerate them batched and one by one), and the
    seconds it took. RuntimeError when a variant was unavailable."""
    _sync()
    began = time.perf_counter()
    arena = engine.arena(example.instruction, config, reference=example.output, task=example.task,
                         input_text=example.input)
    _sync()
    engine_s = time.perf_counter() - began
    available = [result for result in arena.results if result.available]
    missing = [f"{result.variant}: {result.error}" for result in arena.results if not result.available]
    if missing:
        raise RuntimeError(f"variants unavailable: {missing}")
    keys = [context.adapter_keys.get(result.adapter) if result.adapter else None for result in available]
    return available, [result.prompt for result in available], keys, engine_s


def _batched(host, prompts: list[str], keys: list[str | None], generation: GenerationConfig,
             max_batch_size: int) -> tuple[list, float]:
    """(a) exactly what run_examples does: rows sorted by prompt length, one host.generate; outputs in input order."""
    order = sorted(range(len(prompts)), key=lambda i: host.count_tokens(prompts[i]))
    _sync()
    began = time.perf_counter()
    out = host.generate([prompts[i] for i in order], [keys[i] for i in order], generation,
                        max_batch_size=max_batch_size)
    _sync()
    seconds = time.perf_counter() - began
    outputs: list = [None] * len(prompts)
    for i, output in zip(order, out, strict=True):
        outputs[i] = output
    return outputs, seconds


def _one_by_one(host, prompts: list[str], keys: list[str | None], generation: GenerationConfig) -> tuple[list, float]:
    """(b) the same prompts, one host.generate call each, with each row's adapter."""
    _sync()
    began = time.perf_counter()
    outputs = [host.generate([prompt], [key], generation)[0] for prompt, key in zip(prompts, keys, strict=True)]
    _sync()
    return outputs, time.perf_counter() - began


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core.engine import Engine

    workspace = Path(tempfile.mkdtemp(prefix="bench-arena-ws-"))
    try:
        engine = Engine(workspace, dtype=args.dtype)
        variants = args.variants
        began = time.perf_counter()
        index = engine.ensure_demo_index() if {"rag", "finetuned_rag"} & set(variants) else None
        index_s = time.perf_counter() - began
        run_dir = engine.install_demo_run()
        began = time.perf_counter()
        host = engine.host()
        model_load_s = time.perf_counter() - began
        generation = generation_config(args, max_new_tokens=args.max_new_tokens)  # greedy
        config = ArenaConfig(variants=variants, adapters=[str(run_dir)], index=str(index) if index else None,
                             generation=generation)
        context = engine.arena_context(config)  # loads the adapter, the knowledge base, the few-shot pool
        queries = [example for example in load_examples(demo_path("test.jsonl")).examples
                   if example.output][:args.queries]

        # warm-up: first calls pay one-off costs (kernels, PEFT adapter dispatch, tokenizer caches)
        engine.arena(queries[0].instruction, config, input_text=queries[0].input)
        host.generate(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"], [None],
                      generation_config(args, max_new_tokens=2))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        rows: list[dict[str, Any]] = []
        totals = {"engine_s": 0.0, "batched_s": 0.0, "single_s": 0.0, "batched_tokens": 0, "single_tokens": 0,
                  "identical": 0, "rows": 0, "batched_calls": 0, "single_calls": 0}
        mismatches: list[dict[str, Any]] = []
        for number, example in enumerate(queries):
            # the engine's normal path (retrieval, prompts, one batched generate, scoring), end to end
            available, prompts, keys, engine_s = arena_prompts(engine, context, config, example)
            batched_times, single_times = [], []
            for repeat in range(args.repeats):  # alternate which mode goes first; keep the fastest of each
                for mode in (("batched", "single") if (number + repeat) % 2 == 0 else ("single", "batched")):
                    if mode == "batched":
                        batched, seconds = _batched(host, prompts, keys, generation, config.max_batch_size)
                        batched_times.append(seconds)
                    else:
                        single, seconds = _one_by_one(host, prompts, keys, generation)
                        single_times.append(seconds)
            batched_s, single_s = min(batched_times), min(single_times)
            print(f"query {number + 1}/{len(queries)}: batched {batched_s:.1f} s, one-by-one {single_s:.1f} s "
                  f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            same = 0
            for result, b, s in zip(available, batched, single, strict=True):
                if b.text == s.text:
                    same += 1
                else:
                    mismatches.append({"query": number, "variant": result.variant, "batched": b.text,
                                       "single": s.text})
            engine_same = sum(result.answer == b.text for result, b in zip(available, batched, strict=True))
            b_tokens = sum(output.new_tokens for output in batched)
            s_tokens = sum(output.new_tokens for output in single)
            batch_sizes = sorted({output.batch_size for output in batched})
            steps = max(output.new_tokens + (output.finish == "eos") for output in batched)
            rows.append({"query": number, "rows": len(prompts), "batch_sizes": batch_sizes,
                         "new_tokens": [output.new_tokens for output in batched],
                         "decode_slots_used": round(b_tokens / max(steps * len(prompts), 1), 2),
                         "prompt_tokens": f"{min(o.prompt_tokens for o in batched)}-"
                                          f"{max(o.prompt_tokens for o in batched)}",
                         "engine_s": round(engine_s, 2), "batched_s": round(batched_s, 2),
                         "one_by_one_s": round(single_s, 2), "speedup": round(single_s / batched_s, 2),
                         "batched_tok_s": round(b_tokens / batched_s, 1),
                         "one_by_one_tok_s": round(s_tokens / single_s, 1),
                         "identical": f"{same}/{len(prompts)}", "engine_identical": f"{engine_same}/{len(prompts)}",
                         "batched_runs_s": [round(x, 2) for x in batched_times],
                         "one_by_one_runs_s": [round(x, 2) for x in single_times]})
            totals["engine_s"] += engine_s
            totals["batched_s"] += batched_s
            totals["single_s"] += single_s
            totals["batched_tokens"] += b_tokens
            totals["single_tokens"] += s_tokens
            totals["identical"] += same
            totals["rows"] += len(prompts)
            totals["batched_calls"] += len({output.started_at for output in batched})
            totals["single_calls"] += len(prompts)
        speedup = totals["single_s"] / totals["batched_s"]
        summary = {
            "queries": len(queries), "variants": variants, "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats, "timing": "per query, the fastest of the repeats of each mode (order alternated)",
            "greedy": True, "adapter": run_dir.name, "adapter_method": host.adapters[next(iter(host.adapters))].method
            if host.adapters else None, "mixable": all(info.mixable for info in host.adapters.values()),
            "batched_s": round(totals["batched_s"], 2), "one_by_one_s": round(totals["single_s"], 2),
            "speedup": round(speedup, 2), "target": TARGET, "target_met": speedup >= TARGET,
            "engine_arena_s": round(totals["engine_s"], 2),
            "batched_tokens": totals["batched_tokens"], "one_by_one_tokens": totals["single_tokens"],
            "batched_tokens_per_s": round(totals["batched_tokens"] / totals["batched_s"], 1),
            "one_by_one_tokens_per_s": round(totals["single_tokens"] / totals["single_s"], 1),
            "identical_answers": totals["identical"], "rows": totals["rows"],
            "batched_generate_calls": totals["batched_calls"], "one_by_one_generate_calls": totals["single_calls"],
            "demo_index_build_s": round(index_s, 2), "model_load_in_process_s": round(model_load_s, 2),
            "device": host.base.device, "dtype": str(host.base.dtype), "decoder": args.decoder,
        }
        if torch.cuda.is_available():
            summary["peak_vram_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        payload: dict[str, Any] = {"summary": summary, "per_query": rows, "mismatches": mismatches[:10]}
        if args.long_tokens:  # the same prompts (last query) with longer answers: decode weighs more than prefill
            long_generation = generation_config(args, max_new_tokens=args.long_tokens)
            batched, batched_s = _batched(host, prompts, keys, long_generation, config.max_batch_size)
            single, single_s = _one_by_one(host, prompts, keys, long_generation)
            payload["long_answers"] = {
                "query": len(queries) - 1, "max_new_tokens": args.long_tokens, "batched_s": round(batched_s, 2),
                "one_by_one_s": round(single_s, 2), "speedup": round(single_s / batched_s, 2),
                "batched_tokens": sum(o.new_tokens for o in batched),
                "one_by_one_tokens": sum(o.new_tokens for o in single),
                "identical": sum(b.text == o.text for b, o in zip(batched, single, strict=True))}
            print(f"long answers ({args.long_tokens} tokens): speedup {payload['long_answers']['speedup']}x",
                  file=sys.stderr, flush=True)
        # control: five rows of one length (the last query's zero-shot prompt, each variant's adapter), no padding
        same_prompts = [next(r.prompt for r in available if r.strategy == "zero_shot")] * len(prompts) \
            if any(r.strategy == "zero_shot" for r in available) else None
        if same_prompts and not args.smoke:
            batched, batched_s = _batched(host, same_prompts, keys, generation, config.max_batch_size)
            single, single_s = _one_by_one(host, same_prompts, keys, generation)
            payload["equal_length_control"] = {
                "rows": len(same_prompts), "prompt_tokens": host.count_tokens(same_prompts[0]),
                "batched_s": round(batched_s, 2), "one_by_one_s": round(single_s, 2),
                "speedup": round(single_s / batched_s, 2), "new_tokens": [o.new_tokens for o in batched],
                "identical": sum(b.text == o.text for b, o in zip(batched, single, strict=True))}
        # prefill alone (one new token): what padding every row to the longest prompt costs
        one = generation_config(args, max_new_tokens=1)
        _, prefill_batched_s = _batched(host, prompts, keys, one, config.max_batch_size)
        _, prefill_single_s = _one_by_one(host, prompts, keys, one)
        lengths = [host.count_tokens(prompt) for prompt in prompts]
        payload["prefill"] = {"query": len(queries) - 1, "prompt_tokens": lengths,
                              "padded_positions": max(lengths) * len(lengths), "real_positions": sum(lengths),
                              "batched_s": round(prefill_batched_s, 2), "one_by_one_s": round(prefill_single_s, 2)}
        if args.profile:
            payload["profile"] = profile(host, prompts, keys, generation, config.max_batch_size)
        return payload
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def profile(host, prompts: list[str], keys: list[str | None], generation: GenerationConfig,
            max_batch_size: int) -> dict[str, Any]:
    """torch.profiler over one batched and one one-by-one pass of the last query: the top operators by CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    found: dict[str, Any] = {}
    for label, calls in (("batched", [(prompts, keys)]), ("one_by_one", [([p], [k]) for p, k in
                                                                         zip(prompts, keys, strict=True)])):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch_prompts, batch_keys in calls:
                host.generate(batch_prompts, batch_keys, generation, max_batch_size=max_batch_size)
        averages = prof.key_averages()
        total = sum(event.self_cpu_time_total for event in averages)
        top = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:12]
        found[label] = {"self_cpu_total_s": round(total / 1e6, 2),
                        "top": [{"op": event.key, "self_cpu_s": round(event.self_cpu_time_total / 1e6, 3),
                                 "share": round(event.self_cpu_time_total / total, 3), "calls": event.count}
                                for event in top]}
        print(f"\nprofile {label}: self CPU {total / 1e6:.2f} s")
        print_table(found[label]["top"], ["op", "self_cpu_s", "share", "calls"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no cold load; for CI")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: the device policy)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each mode per query (fastest kept)")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold (GGUF conversion) load")
    parser.add_argument("--long-tokens", type=int, default=128,
                        help="also time the last query with this many new tokens (0: skip)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over the last query")
    add_decoder_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.variants, args.max_new_tokens, args.skip_cold, args.repeats, args.long_tokens = (
            1, "zero_shot,finetuned", 4, True, 1, 0)
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()
    began = time.perf_counter()
    payload = run(args)
    if not args.skip_cold:
        print("cold vs warm model load (subprocesses)", file=sys.stderr, flush=True)
        payload["load"] = cold_warm_load()
    payload["loadavg_before"] = [round(x, 2) for x in load_before]
    payload["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    payload["bench_wall_s"] = round(time.perf_counter() - began, 1)

    print_table(payload["per_query"], ["query", "rows", "prompt_tokens", "new_tokens", "decode_slots_used", "engine_s",
                                       "batched_s", "one_by_one_s", "speedup", "batched_tok_s", "one_by_one_tok_s",
                                       "identical"])
    summary = payload["summary"]
    print()
    print_table([{"mode": "batched", "seconds": summary["batched_s"],
                  "generate_calls": summary["batched_generate_calls"],
                  "tokens": summary["batched_tokens"], "tokens_per_s": summary["batched_tokens_per_s"]},
                 {"mode": "one_by_one", "seconds": summary["one_by_one_s"],
                  "generate_calls": summary["one_by_one_generate_calls"], "tokens": summary["one_by_one_tokens"],
                  "tokens_per_s": summary["one_by_one_tokens_per_s"]}])
    print(f"\nspeedup {summary['speedup']}x (target {TARGET}x: {'met' if summary['target_met'] else 'MISSED'}); "
          f"identical answers {summary['identical_answers']}/{summary['rows']}")
    print()
    phases = [{"what": "prefill only (1 new token)", "query": payload["prefill"]["query"],
               "batched_s": payload["prefill"]["batched_s"], "one_by_one_s": payload["prefill"]["one_by_one_s"],
               "padded_positions": payload["prefill"]["padded_positions"],
               "real_positions": payload["prefill"]["real_positions"]}]
    if "equal_length_control" in payload:
        control = payload["equal_length_control"]
        phases.append({"what": f"control: {control['rows']} equal prompts", "query": payload["prefill"]["query"],
                       "batched_s": control["batched_s"], "one_by_one_s": control["one_by_one_s"],
                       "speedup": control["speedup"], "identical": control["identical"],
                       "padded_positions": control["rows"] * control["prompt_tokens"],
                       "real_positions": control["rows"] * control["prompt_tokens"]})
    if "long_answers" in payload:
        long = payload["long_answers"]
        phases.append({"what": f"{long['max_new_tokens']} new tokens", "query": long["query"],
                       "batched_s": long["batched_s"], "one_by_one_s": long["one_by_one_s"],
                       "speedup": long["speedup"], "identical": long["identical"]})
    print_table(phases, ["what", "query", "batched_s", "one_by_one_s", "speedup", "identical", "padded_positions",
                         "real_positions"])
    if "load" in payload:
        print()
        print_table([payload["load"]])
    path = write_result("arena" if args.decoder == "engine" else "arena-hf", payload, smoke=args.smoke)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
