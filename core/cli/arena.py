"""Commands that run variants: ``arena`` (one query side by side) and ``eval`` (a test set)."""

from __future__ import annotations

import argparse
import logging

from core import distributed
from core.arena import ArenaConfig
from core.arena.evals import new_eval_id
from core.arena.prompting import SHOT_SELECTIONS
from core.cli.common import CliError, Command, Delegated, EngineFactory, Result, StageProgress
from core.cli.launch import inside_launch, launch
from core.cli.options import Option, add_options, field_names, option_values
from core.data import demo_path, load_examples
from core.inference import DECODERS, GenerationConfig
from core.models import pick_device

logger = logging.getLogger(__name__)

ARENA_OPTIONS = (
    Option("variants", separator=",", metavar="a,b,...", note="comma-separated"),
    Option("adapters", "--adapter", metavar="RUN_DIR", note="repeat to compare several"),
    Option("index", metavar="DIR"),
    Option("few_shot_pool", "--few-shot", metavar="PATH"),
    Option("few_shot_k", "--shots"),
    Option("few_shot_selection", "--selection", choices=SHOT_SELECTIONS),
    Option("rag_k", "--k"),
    Option("hybrid", "--dense", invert=True, note="retrieve by embeddings only"),
    Option("system_prompt", "--system"),
    Option("max_batch_size", "--batch-size"),
)
ARENA_SKIPPED = ("generation",)  # its fields are flags of their own (GENERATION_SKIPPED aside)
GENERATION_SKIPPED = ("seed",)  # --seed (ArenaConfig's) seeds both


def _variant_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int | None = None) -> None:
    add_options(parser, ArenaConfig, exclude=ARENA_SKIPPED, options=ARENA_OPTIONS)
    parser.add_argument("--model", help="base model: registry name, hub id or folder (default: SmolLM2-135M-Instruct)")
    add_options(parser, GenerationConfig, exclude=GENERATION_SKIPPED,
                options=(Option("max_new_tokens", default=max_new_tokens),
                         Option("stop", note="repeatable"), Option("decoder", choices=DECODERS)))


def arena_config(args: argparse.Namespace) -> ArenaConfig:
    """The ArenaConfig of the given flags (the dataclasses' defaults for the rest); ``--seed`` seeds both the
    few-shot picks and sampling."""
    generation = option_values(args, field_names(GenerationConfig))  # seed: ArenaConfig's flag
    values = option_values(args, field_names(ArenaConfig, exclude=ARENA_SKIPPED))
    return ArenaConfig(**values, generation=GenerationConfig(**generation))


def _arena_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query", required=True, help="the question or instruction")
    parser.add_argument("--reference", help="the expected answer (scores are n/a without one)")
    parser.add_argument("--input", default="", help="text the instruction applies to (e.g. a message to summarise)")
    parser.add_argument("--task", help="task name, e.g. classification (scores accuracy on the label)")
    _variant_arguments(parser)


def cmd_arena(args: argparse.Namespace, engine: EngineFactory) -> Result:
    config = arena_config(args)
    result = engine().arena(args.query, config, reference=args.reference, task=args.task, input_text=args.input,
                            model=args.model)
    return result.to_dict()


def _human_arena(result: Result) -> None:
    print(f"query: {result['query']}")
    if result.get("reference"):
        print(f"reference: {result['reference']}")
    for row in result["results"]:
        print(f"\n== {row['variant']}" + (f"  ({row['latency_s']:.1f} s, {row['new_tokens']} tokens)"
                                          if row["available"] else "  (unavailable)"))
        if not row["available"]:
            print(f"   {row['error']}")
            continue
        print("   " + row["answer"].replace("\n", "\n   "))
        for note in row.get("notes") or []:  # context cut to fit the model's window
            print(f"   note: {note}")
        shown = {k: round(v, 3) for k, v in row["metrics"].items() if v is not None}
        if shown:
            print(f"   scores: {shown}")
        for passage in row["retrieved"]:
            print(f"   [{passage['score']:.3f}] {passage['source']}")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="test set: .jsonl/.json/.csv/.tsv with reference answers "
                                       "(default: the demo test split)")
    parser.add_argument("--out", help="folder for the results (default: a new folder under the workspace's evals/)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples")
    parser.add_argument("--tasks", help="comma-separated task names to keep (e.g. qa,classification)")
    parser.add_argument("--report", choices=("html",), help="the self-contained evidence report (verdicts, pair "
                        "table, slices, cost, every answer, provenance): report.html in the evaluation folder. It is "
                        "written with or without this flag, and its path is the output's 'report'; --report html "
                        "also prints 'report: PATH' on stderr")
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="split the examples over N processes, each with its own model (data parallel; gloo on "
                             "CPU, NCCL on GPUs); one results file, as one process writes it (default: 1)")
    _variant_arguments(parser, max_new_tokens=64)


def cmd_eval(args: argparse.Namespace, engine: EngineFactory) -> Result:
    tasks = [task.strip() for task in args.tasks.split(",")] if args.tasks else None
    data = args.data or str(demo_path("test.jsonl"))
    config = arena_config(args)
    if args.num_processes is not None and not 1 <= args.num_processes <= 1024:
        raise CliError(f"--num-processes: must be in 1..1024, got {args.num_processes}")
    if (args.num_processes or 1) > 1 and not inside_launch():  # the same command in N processes, one job
        load_examples(data)  # a bad test file: one line here, before any process starts
        argv = list(args.argv)
        if not args.out:  # every process must know the one folder rank 0 writes
            argv += ["--out", str(engine().workspace.evals / new_eval_id(data))]
        raise Delegated(launch(argv, args.num_processes))
    if inside_launch():  # this process's place in the job, before its model loads (its own GPU on CUDA)
        distributed.init(pick_device(engine().models.device))
    result = engine().evaluate(data, config, out=args.out, limit=args.limit, tasks=tasks, model=args.model,
                               on_progress=StageProgress() if distributed.current().is_main else None)
    contract = result.contract()
    if args.report and distributed.current().is_main:  # the other processes of a job save nothing
        logger.info("report: %s", contract["report"])
    return contract


def _human_eval(result: Result) -> None:
    print(f"eval_dir: {result['eval_dir']}  ({result['n']} examples, {result['wall_s']} s)")
    for variant, metrics in result["summary"].items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                          if v is not None and k not in ("generate_s", "new_tokens"))
        print(f"{variant}: {shown}")
    for verdict in (result.get("verdict") or {}).values():
        print(f"verdict: {verdict['sentence']}")
    print(f"report: {result['report']}")


COMMANDS = (
    Command("arena", "one query through zero-shot, few-shot, RAG, fine-tuned and fine-tuned+RAG, side by side",
            _arena_arguments, cmd_arena, _human_arena),
    Command("eval", "run variants over a test set; per-example scores and a summary with 95% intervals",
            _eval_arguments, cmd_eval, _human_eval),
)
