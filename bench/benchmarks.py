"""Which backend should drive lm-evaluation-harness's generation: its own HF backend (``HFLM.generate_until``: one
left-padded ``model.generate`` per batch) or the engine's batch decoder (continuous batching), on the same bundled
generate-until task, the same loaded model and the same machine. Log-likelihood tasks go through the harness's own
batched forward passes either way; their throughput is reported for scale.

    python -m bench.benchmarks [--smoke] [--rounds N] [--batch-size N]

Writes bench/results/benchmarks.json (smoke: bench/results/smoke/benchmarks.json): per backend the generation
seconds, tokens generated and tokens/s (best of ``--rounds``, backends alternating), the share of answers the two
backends agree on (greedy; whitespace stripped) and the task score of each; then the decision (the faster backend
becomes core.benchmarks' default only when it is faster by more than the noise, 10%).

Then what a user would run instead of the engine: lm-evaluation-harness's own ``HFLM`` as it ships, over the same
weights and rows, at its default batch size (1) and at the engine's (``--batch-size``), against the engine
backend, all timed by the wall time of the whole ``simple_evaluate`` call (best of ``--rounds``). HFLM gets its own
copy of the model with transformers' default attention (SDPA), as ``HFLM(pretrained=...)`` would load it; the
engine's copy uses core.attention on a CPU, part of what is measured:
``speedup_vs_lm_eval`` is the engine's generated tokens/s over the faster plain setting's. ``batch_size="auto"`` is
not run on a CPU: HFLM finds it by five forward passes of (64, max_length) tokens with a log-softmax over the
vocabulary (for SmolLM2: 64 x 8192 x 49152 floats, ~100 GB), which no CPU machine here survives.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from bench.common import print_table, write_result
from core.benchmarks import make_lm
from core.benchmarks.tasks import task_manager
from core.models import load_causal_lm

GENERATE_TASK = "tune_arena_probe"
LOGLIKELIHOOD_TASK = "tune_arena_probe_mc"
NOISE = 0.10


def _evaluate(loaded: Any, backend: str, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    timings: dict[str, float] = {}
    started: dict[str, float] = {}

    def progress(kind: str, done: int, total: int) -> None:
        started.setdefault(kind, time.perf_counter())
        if done == total:
            timings[kind] = time.perf_counter() - started[kind]

    lm = make_lm(loaded, backend=backend, batch_size=batch_size, progress=progress)
    begin = time.perf_counter()
    raw = simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=task_manager(), log_samples=True,
                          apply_chat_template=True, bootstrap_iters=0, verbosity=None)
    wall = time.perf_counter() - begin
    samples = sorted(raw["samples"][task], key=lambda sample: sample["doc_id"])
    answers = [str(sample["filtered_resps"][0]).strip() if sample["filtered_resps"] else "" for sample in samples]
    tokens = sum(len(loaded.tokenizer(answer, add_special_tokens=False).input_ids) for answer in answers)
    metric = next(key for key in raw["results"][task] if "," in key and "_stderr" not in key)
    return {"wall_s": wall, "answers": answers, "tokens": tokens, "score": raw["results"][task][metric],
            "metric": metric.split(",")[0], "requests": len(samples), "chunk_s": timings}


def _evaluate_plain(loaded: Any, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """The same task through lm_eval's HFLM as it ships, timed by the call's wall time."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
              device=str(loaded.model.device))
    begin = time.perf_counter()
    raw = simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=task_manager(), log_samples=True,
                          apply_chat_template=True, bootstrap_iters=0, verbosity=None)
    wall = time.perf_counter() - begin
    samples = raw["samples"][task]
    answers = [str(sample["filtered_resps"][0]).strip() if sample["filtered_resps"] else "" for sample in samples]
    tokens = sum(len(loaded.tokenizer(answer, add_special_tokens=False).input_ids) for answer in answers)
    return {"wall_s": wall, "tokens": tokens, "requests": len(samples), "batch_size": lm.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="8 questions, one round (a check that it runs)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per backend, alternating (best is kept)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    limit = 8 if args.smoke else None
    rounds = 1 if args.smoke else max(1, args.rounds)
    loaded = load_causal_lm()
    runs: dict[str, list[dict[str, Any]]] = {"hf": [], "engine": []}
    _evaluate(loaded, "hf", GENERATE_TASK, 2, args.batch_size)  # warm-up: first-call costs out of the figures
    for number in range(rounds):
        for backend in (("hf", "engine") if number % 2 == 0 else ("engine", "hf")):
            runs[backend].append(_evaluate(loaded, backend, GENERATE_TASK, limit, args.batch_size))
    best = {backend: min(results, key=lambda r: r["chunk_s"].get("generate_until", r["wall_s"]))
            for backend, results in runs.items()}
    rows = []
    for backend, result in best.items():
        seconds = result["chunk_s"].get("generate_until", result["wall_s"])
        rows.append({"backend": backend, "requests": result["requests"], "generate_s": round(seconds, 2),
                     "tokens": result["tokens"], "tokens_per_s": round(result["tokens"] / seconds, 1),
                     "score": round(result["score"], 4), "metric": result["metric"],
                     "rounds_s": [round(r["chunk_s"].get("generate_until", r["wall_s"]), 2)
                                  for r in runs[backend]]})
    agree = sum(a == b for a, b in zip(best["hf"]["answers"], best["engine"]["answers"], strict=True))
    speedup = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]  # engine over hf
    decision = ("engine" if speedup > 1 + NOISE else "hf" if speedup < 1 - NOISE else "hf (no measurable "
                "difference: the harness's own backend stays the default)")
    as_shipped = load_causal_lm()  # the same weights and dtype, with transformers' default attention
    as_shipped.model.set_attn_implementation("sdpa")
    contenders = {"lm_eval_hf_batch_1": lambda: _evaluate_plain(as_shipped, GENERATE_TASK, limit, 1),
                  f"lm_eval_hf_batch_{args.batch_size}": lambda: _evaluate_plain(as_shipped, GENERATE_TASK, limit,
                                                                                args.batch_size),
                  "engine": lambda: _evaluate(loaded, "engine", GENERATE_TASK, limit, args.batch_size)}
    whole: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for number in range(rounds):  # the harness as it ships vs the engine, whole calls, order alternating
        for name in (list(contenders) if number % 2 == 0 else list(reversed(contenders))):
            whole[name].append(contenders[name]())
    versus = {}
    for name, results in whole.items():
        fastest = min(results, key=lambda r: r["wall_s"])
        versus[name] = {"wall_s": round(fastest["wall_s"], 2), "tokens": fastest["tokens"],
                        "tokens_per_s": round(fastest["tokens"] / fastest["wall_s"], 1),
                        "rounds_s": [round(r["wall_s"], 2) for r in results]}
    plain_best = max((row for name, row in versus.items() if name != "engine"), key=lambda r: r["tokens_per_s"])
    speedup_vs_lm_eval = versus["engine"]["tokens_per_s"] / plain_best["tokens_per_s"]
    print_table([{"contender": name, **row} for name, row in versus.items()],
                ["contender", "wall_s", "tokens", "tokens_per_s", "rounds_s"])
    print(f"speedup_vs_lm_eval: {speedup_vs_lm_eval:.2f}x (engine's generated tokens/s over the faster plain HFLM)")
    loglik = _evaluate(loaded, "hf", LOGLIKELIHOOD_TASK, limit, args.batch_size)
    loglik_s = loglik["chunk_s"].get("loglikelihood", loglik["wall_s"])
    print_table(rows, ["backend", "requests", "generate_s", "tokens", "tokens_per_s", "score", "rounds_s"])
    print(f"answers identical: {agree}/{len(best['hf']['answers'])}; engine/hf tokens/s: {speedup:.2f}x -> "
          f"default backend: {decision}")
    print(f"{LOGLIKELIHOOD_TASK}: {loglik['requests']} questions x 4 options in {loglik_s:.1f} s")
    path = write_result("benchmarks", {
        "task": GENERATE_TASK, "limit": limit, "batch_size": args.batch_size, "rounds": rounds,
        "model": loaded.resolved.name, "dtype": str(loaded.dtype).removeprefix("torch."), "backends": rows,
        "answers_identical": agree, "answers": len(best["hf"]["answers"]), "engine_over_hf": round(speedup, 3),
        "decision": decision, "noise": NOISE, "versus_lm_eval": versus,
        "speedup_vs_lm_eval": round(speedup_vs_lm_eval, 3),
        "attention": {"engine": loaded.model.config._attn_implementation,
                      "lm_eval_hf": as_shipped.model.config._attn_implementation},
        "loglikelihood": {"task": LOGLIKELIHOOD_TASK, "questions": loglik["requests"],
                          "requests": loglik["requests"] * 4, "seconds": round(loglik_s, 2),
                          "requests_per_s": round(loglik["requests"] * 4 / loglik_s, 1)},
    }, smoke=args.smoke)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
