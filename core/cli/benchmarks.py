"""``benchmark``: lm-evaluation-harness tasks on the base model and on fine-tuned runs, with each run's change from
the base (``--list``: the tasks available offline)."""

from __future__ import annotations

import argparse
import logging

from core import distributed
from core.benchmarks import BACKENDS, BenchmarkConfig
from core.benchmarks.runner import load_tasks
from core.benchmarks.tasks import check_include, resolve_tasks
from core.cli.common import CliError, Command, Delegated, EngineFactory, Result, StageProgress
from core.cli.launch import inside_launch, launch
from core.cli.options import Option, add_options, option_values
from core.models import pick_device

BENCHMARK_OPTIONS = (
    Option("tasks", separator=",", metavar="NAME[,NAME...]", note="bundled: tune_arena_probe, tune_arena_probe_mc, "
           "tune_arena_knowledge, tune_arena_tickets (or the tag tune_arena); online, any harness task (mmlu, boolq, "
           "hellaswag...)"),
    Option("include", metavar="DIR", note="repeatable"),
    Option("chat_template", "--no-chat-template", invert=True),
    Option("backend", choices=BACKENDS),
)
FIELDS = ("tasks", "limit", "shots", "include", "batch_size", "chat_template", "backend")


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, BenchmarkConfig, FIELDS, options=BENCHMARK_OPTIONS)
    parser.add_argument("--adapter", dest="adapters", action="append", metavar="RUN",
                        help="a run (id or folder) to benchmark beside the base; repeat for several")
    parser.add_argument("--model", help="base model: registry name, hub id or folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="split each task's requests over N processes, each with its own model (the harness's "
                             "data parallelism; gloo on CPU, NCCL on GPUs); rank 0 scores and saves (default: 1)")
    parser.add_argument("--list", action="store_true", help="list the tasks available offline (bundled and "
                                                            "--include) and exit")


def cmd_benchmark(args: argparse.Namespace, engine: EngineFactory) -> Result:
    values = option_values(args, FIELDS)
    if args.list:
        return {"tasks": engine().benchmark_tasks(values.get("include") or [])}
    if not values.get("tasks"):
        raise CliError("benchmark: --tasks NAME[,NAME...] is required (or --list)")
    config = BenchmarkConfig(**values)  # bad flags fail before the workspace is opened or a model loads
    if args.num_processes is not None and not 1 <= args.num_processes <= 1024:
        raise CliError(f"--num-processes: must be in 1..1024, got {args.num_processes}")
    if (args.num_processes or 1) > 1 and not inside_launch():  # the same command in N processes, one job
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        load_tasks(resolve_tasks(config.tasks, check_include(config.include)), config.tasks)  # one line, here
        raise Delegated(launch(list(args.argv), args.num_processes))
    if inside_launch():  # this process's place in the job, before its models load (its own GPU on CUDA)
        distributed.init(pick_device(engine().models.device))
    # a hub task offline: the hub client's retry warnings would bury the one line that says what is missing
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    progress = StageProgress()
    return engine().benchmark(values.pop("tasks"), adapters=args.adapters or [], model=args.model,
                              on_progress=(lambda p: progress(f"{p['model']} {p['stage']}", p["done"], p["total"]))
                              if distributed.current().is_main else None, **values)


def _interval(row: Result) -> str:
    return f"{row['delta']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]" + (
        f" p {row['p']:.3f}" if row.get("p") is not None else "")


def _human(result: Result) -> None:
    if "deltas" not in result:  # --list
        for row in result["tasks"]:
            members = f" ({len(row['tasks'])} tasks)" if row.get("tasks") else ""
            print(f"{row['name']:<44} {row['kind']:<5} {row['source']:<7} {row.get('output_type') or '':<16} "
                  f"{row['description']}{members}")
        return
    labels = list(result["models"])
    print(f"benchmark {result['id']} on {result['model']} ({result['wall_s']:.0f} s): {result['path']}")
    for label, facts in result["models"].items():
        if facts.get("skipped"):
            print(f"  {label}: not run: {facts['skipped']}")
        for task, reason in (facts.get("not_applicable") or {}).items():
            print(f"  {label}: not run on {task}: {reason}")
    for task, rows in result["tasks"].items():
        cells = []
        for label in labels:
            row = rows.get(label)
            if row is None:
                continue
            stderr = f" ± {row['stderr']:.3f}" if row.get("stderr") is not None else ""
            cells.append(f"{label} {row[row['metric']]:.3f}{stderr}")
        metric = next(iter(rows.values()))["metric"]
        print(f"{task} ({metric}): " + " · ".join(cells))
        for label in labels:
            delta = result["deltas"].get(label, {}).get(task)
            if delta and delta["delta"] is not None:
                print(f"    {label} - base: {_interval(delta)}")


COMMANDS = (
    Command("benchmark", "standard benchmarks through lm-evaluation-harness on the base model and each run, with "
            "each run's change from the base (forgetting); --list: the tasks available offline", _arguments,
            cmd_benchmark, _human),
)
