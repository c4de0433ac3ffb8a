"""`python -m core <command> ... [--json]`: progress on stderr; with --json exactly one JSON document on stdout.

Bad arguments or bad input exit with code 2 and one line on stderr saying what and where.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from core.data import DataError, load_examples
from core.methods import METHODS, get_method
from core.models import (
    ModelNotFoundError,
    default_embedding_model,
    load_causal_lm,
    resolve_base_model,
    resolve_embedding_model,
)
from core.runs import RunStore
from core.training import (
    TrainingConfig,
    TrainingOutOfMemoryError,
    list_presets,
    load_preset,
    merge_and_export,
    resume,
    train,
)

logger = logging.getLogger("core.cli")

Command = Callable[[argparse.Namespace], dict[str, Any]]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str):
    """Register ``func`` (args -> result dict) under ``name`` with an argument builder ``func.arguments``."""

    def register(func: Command) -> Command:
        COMMANDS[name] = (func, getattr(func, "arguments", lambda parser: None), help_text)
        return func

    return register


class CliError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------------------------


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="base model: registry name, hub id, folder or .gguf (default: SmolLM2)")
    parser.add_argument("--prepare", action="store_true",
                        help="load the model now (converting and caching a GGUF once) and report load times")


def cmd_models(args: argparse.Namespace) -> dict[str, Any]:
    resolved = resolve_base_model(args.model)
    embedding = resolve_embedding_model(None)
    result: dict[str, Any] = {
        "model": resolved.name, "kind": resolved.kind, "location": resolved.location,
        "cache_dir": str(resolved.cache_dir) if resolved.cache_dir else None, "cached": resolved.is_cached,
        "embedding_model": default_embedding_model(), "embedding_location": embedding.location,
    }
    if args.prepare:
        first = load_causal_lm(args.model)
        start = time.perf_counter()
        second = load_causal_lm(args.model)
        result.update(first_load_s=round(first.load_s, 2), second_load_s=round(time.perf_counter() - start, 2),
                      device=second.device, dtype=str(second.dtype).removeprefix("torch."), cached=True)
        logger.info("first load %.1f s, second load %.2f s", first.load_s, result["second_load_s"])
    return result


cmd_models.arguments = _models_arguments  # type: ignore[attr-defined]
command("models", "show where the base and embedding models come from; --prepare converts and caches")(cmd_models)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset file: .jsonl, .json, .csv or .tsv")
    parser.add_argument("--shape", default="auto", help="auto, alpaca, prompt_completion, chat or qa")
    parser.add_argument("--no-answers", action="store_true", help="accept rows without a reference answer")


def cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    data = load_examples(args.data, args.shape, require_output=not args.no_answers)
    return {"path": data.path, "shape": data.shape, "rows": len(data), "tasks": data.tasks(),
            "with_source": sum(ex.source is not None for ex in data)}


cmd_data.arguments = _data_arguments  # type: ignore[attr-defined]
command("data", "validate a dataset file and count its rows per task")(cmd_data)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="training data: .jsonl, .json, .csv or .tsv (required unless --resume)")
    parser.add_argument("--method", help=f"one of {', '.join(METHODS)} (default: the preset's, else lora)")
    parser.add_argument("--model", help="base model: registry name, hub id or folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--preset", help=f"settings from assets/presets: {', '.join(list_presets())}")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the data")
    length.add_argument("--max-steps", type=int, help="optimizer steps (instead of epochs)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the preset's or the method's)")
    parser.add_argument("--batch-size", type=int, help="examples per micro-batch")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--max-length", type=int, help="most tokens per example")
    parser.add_argument("--val-data", help="validation data (default: hold out 10%% of --data)")
    parser.add_argument("--seed", type=int, help="seed for init, order and dropout")
    parser.add_argument("--eval-every", type=int, help="steps between validation passes (0 = about 5 per run)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0 = about 4 per run)")
    parser.add_argument("--max-eval-examples", type=int, help="validation examples per pass (the first N; default 64)")
    parser.add_argument("--device", help="cpu, cuda or mps")
    parser.add_argument("--dtype", help="fp32, bf16 or fp16")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a method setting, e.g. --set r=16 --set target_modules=q_proj,v_proj (repeatable)")
    parser.add_argument("--out", help="the run folder to create (default: a new folder under the workspace's runs/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run from its checkpoint")


_TRAIN_FLAGS = {"epochs": "epochs", "max_steps": "max_steps", "lr": "learning_rate", "batch_size": "batch_size",
                "grad_accum": "grad_accum", "max_length": "max_length", "val_data": "val_data", "seed": "seed",
                "eval_every": "eval_every", "checkpoint_every": "checkpoint_every",
                "max_eval_examples": "max_eval_examples", "device": "device",
                "dtype": "dtype", "model": "base_model", "data": "data", "method": "method"}


def training_config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Preset (if any) < explicit flags < --set method settings."""
    values = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if values.get("max_steps") is not None:
        values.setdefault("epochs", 1.0)
    method_settings: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set: expected KEY=VALUE, got {item!r}")
        method_settings[key.strip()] = value.strip()
    if method_settings:
        values["method_config"] = method_settings
    if not values.get("data"):
        raise CliError("--data: required (the training data file)")
    if args.preset:
        return TrainingConfig.from_preset(args.preset, **values)
    return TrainingConfig.from_dict(values)


class _Progress:
    """A progress bar on stderr (redrawn in place on a terminal, a line per ~5% otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line_step = 0

    def step(self, step: int, total: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> None:
        filled = int(24 * step / total)
        text = (f"[{'#' * filled}{'.' * (24 - filled)}] step {step}/{total} loss {loss:.4f} lr {lr:.2e} "
                f"{tokens_per_s:.0f} tok/s eta {int(eta_s) // 60}m{int(eta_s) % 60:02d}s")
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if step == total else ""))
            sys.stderr.flush()
        elif step == total or step - self.last_line_step >= max(1, total // 20):
            self.last_line_step = step
            print(text, file=sys.stderr, flush=True)

    def eval(self, step: int, val_loss: float) -> None:
        print(("\n" if self.tty else "") + f"step {step}: validation loss {val_loss:.4f}", file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import threading

    stop = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:  # first Ctrl-C: stop after this step and save
        if stop.is_set():
            raise KeyboardInterrupt
        logger.warning("stopping after the current step (Ctrl-C again to abort)")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    progress = _Progress()
    try:
        if args.resume:
            result = resume(args.resume, on_step=progress.step, on_eval=progress.eval, stop_event=stop)
        else:
            config = training_config_from_args(args)
            result = train(config, run_dir=args.out, on_step=progress.step, on_eval=progress.eval, stop_event=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    logger.info("run %s %s: %d/%d steps, %.0f tokens/s, %s", result.run_id, result.state, result.steps,
                result.total_steps, result.tokens_per_s, result.run_dir)
    return result.contract()


cmd_train.arguments = _train_arguments  # type: ignore[attr-defined]
command("train", "fine-tune the base model with one method; --resume continues a stopped or killed run")(cmd_train)


def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", help="show one method's settings")


def cmd_methods(args: argparse.Namespace) -> dict[str, Any]:
    names = [args.method] if args.method else list(METHODS)
    methods = {}
    for name in names:
        method = get_method(name)
        methods[name] = {"title": method.title, "description": method.description, "default_lr": method.default_lr,
                         "settings": [{k: (v if isinstance(v, int | float | str | bool | list | None) else str(v))
                                       for k, v in row.items()} for row in method.settings()]}
    return {"methods": methods, "presets": {name: load_preset(name)["description"] for name in list_presets()}}


cmd_methods.arguments = _methods_arguments  # type: ignore[attr-defined]
command("methods", "list the fine-tuning methods, their settings and the presets")(cmd_methods)


def _runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", help="the runs folder (default: the workspace's runs/)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--delete", metavar="RUN", help="delete a run (id or folder)")
    action.add_argument("--merge", metavar="RUN", help="merge a LoRA-family run into the base and export it to --out")
    parser.add_argument("--out", help="with --merge: the folder for the merged model")


def cmd_runs(args: argparse.Namespace) -> dict[str, Any]:
    from core.workspace import Workspace

    store = RunStore(args.runs or Workspace.open().runs)
    if args.delete:
        store.delete(args.delete)
        return {"deleted": args.delete}
    if args.merge:
        if not args.out:
            raise CliError("--out: required with --merge (the folder for the merged model)")
        out = merge_and_export(store.get(args.merge).path, args.out)
        return {"merged": args.merge, "out": str(out)}
    rows = []
    for run in store.list():
        config, result = run.config, run.result or {}
        rows.append({"run_id": run.run_id, "run_dir": str(run.path), "method": config.get("method"),
                     "state": run.state, "steps": result.get("steps", run.status.get("step")),
                     "trainable_params": result.get("trainable_params"), "adapter_bytes": result.get("adapter_bytes"),
                     "final_val_loss": result.get("final_val_loss"), "wall_s": result.get("wall_s")})
    return {"runs": rows}


cmd_runs.arguments = _runs_arguments  # type: ignore[attr-defined]
command("runs", "list training runs; --delete one; --merge one into the base model and export it")(cmd_runs)


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", nargs="+", required=True, metavar="PATH",
                        help="files or folders (walked recursively): .md .txt .html .pdf .jsonl .csv")
    parser.add_argument("--out", help="the index folder (default: the workspace's indexes/<name of the first PATH>);"
                                      " an existing index there is updated: only new, changed and deleted files")
    parser.add_argument("--chunk-size", type=int, help="most tokens per chunk (default 200)")
    parser.add_argument("--overlap", type=int, help="tokens shared by consecutive chunks of a section (default 32)")
    parser.add_argument("--index-type", choices=("flat", "hnsw", "ivf"), help="FAISS index (default flat: exact)")
    parser.add_argument("--embedding-model", help="sentence-transformers name, hub id or folder "
                                                  "(default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--text-column", help="for .jsonl/.csv: the column holding the text (default: detected)")
    parser.add_argument("--no-context", action="store_true",
                        help="embed chunk text alone, without its document title and headings in front")
    parser.add_argument("--rebuild", action="store_true", help="rebuild from scratch instead of updating")


class _StageProgress:
    """``stage done/total`` lines on stderr, at most one per stage per ~10%."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done - self.last.get(stage, -step) >= step:
            self.last[stage] = done
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def cmd_index(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from core.workspace import Workspace
    from retrieval import ChunkingConfig, IndexConfig, SentenceTransformerEmbedder, build_index

    chunk_values = {"chunk_size": args.chunk_size, "overlap": args.overlap}
    chunking = ChunkingConfig(**{key: value for key, value in chunk_values.items() if value is not None})
    index_config = IndexConfig(index_type=args.index_type or "flat", contextual=not args.no_context)
    out = Path(args.out) if args.out else Workspace.open().indexes / (Path(args.docs[0]).stem or "index")

    def embedder() -> SentenceTransformerEmbedder:  # loaded only once a document could be read
        return SentenceTransformerEmbedder.load(args.embedding_model)

    result = build_index(args.docs, out, embedder, index_config=index_config, chunking=chunking,
                         text_column=args.text_column, rebuild=args.rebuild, on_progress=_StageProgress())
    for item in result.skipped:
        logger.warning("skipped %s: %s", item.path, item.reason)
    for warning in result.warnings:
        logger.warning("%s", warning)
    return result.contract()


cmd_index.arguments = _index_arguments  # type: ignore[attr-defined]
command("index", "build or update a FAISS knowledge base from documents")(cmd_index)


def _search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mmr", type=float, metavar="LAMBDA",
                        help="diversify results with maximal marginal relevance (1 = relevance only, 0 = diversity)")
    parser.add_argument("--dense", action="store_true",
                        help="embedding similarity only (default: hybrid, fused with BM25 keyword ranking)")


def _load_kb(folder: str):
    from retrieval import KnowledgeBase, SentenceTransformerEmbedder

    return KnowledgeBase.load(folder, SentenceTransformerEmbedder.load)


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="DIR", help="an index folder made by `index`")
    parser.add_argument("--query", required=True, help="the text to search for")
    parser.add_argument("--k", type=int, default=5, help="results to return (default 5)")
    _search_options(parser)


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    kb = _load_kb(args.index)
    hits = kb.search(args.query, args.k, mmr_lambda=args.mmr, hybrid=not args.dense)
    return {"index_dir": args.index, "query": args.query, "hybrid": not args.dense, "mmr": args.mmr,
            "results": [hit.to_dict() for hit in hits]}


def _human_search(result: dict[str, Any]) -> None:
    for hit in result["results"]:
        where = " > ".join(hit["headings"]) or hit["title"]
        cosine = f" (cosine {hit['dense_score']:.3f})" if "dense_score" in hit else ""
        print(f"{hit['rank']}. {hit['score']:.4f}{cosine}  {hit['source']}  [{where}]")
        print("   " + " ".join(hit["text"].split())[:300])


cmd_search.arguments = _search_arguments  # type: ignore[attr-defined]
cmd_search.human = _human_search  # type: ignore[attr-defined]
command("search", "top-k chunks of a knowledge base for a query")(cmd_search)


def _retrieval_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="DIR", help="an index folder made by `index`")
    parser.add_argument("--data", required=True, help="JSONL rows with a question (question/query/instruction) and "
                                                      "a source document; rows without a source are left out")
    parser.add_argument("--k", type=int, default=3, help="hit@1..k and MRR@k (default 3)")
    parser.add_argument("--per-question", action="store_true", help="include each question's rank")
    _search_options(parser)


def cmd_retrieval_eval(args: argparse.Namespace) -> dict[str, Any]:
    from retrieval import evaluate_retrieval, load_cases

    cases = load_cases(args.data)
    kb = _load_kb(args.index)
    report = evaluate_retrieval(kb, cases, k=args.k, mmr_lambda=args.mmr, hybrid=not args.dense)
    return {"index_dir": args.index, "data": args.data, **report.to_dict(per_question=args.per_question)}


cmd_retrieval_eval.arguments = _retrieval_eval_arguments  # type: ignore[attr-defined]
command("retrieval-eval", "hit@k and MRR of a knowledge base over questions with known source documents")(
    cmd_retrieval_eval)


def _variant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", help="comma-separated: zero_shot,few_shot,rag,finetuned,finetuned_rag "
                                           "(default: all five; strategy@RUN picks a run for one variant)")
    parser.add_argument("--adapter", action="append", default=[], metavar="RUN_DIR",
                        help="a training run (folder or id) for the fine-tuned variants; repeat to compare several")
    parser.add_argument("--index", metavar="DIR", help="knowledge base folder for the RAG variants")
    parser.add_argument("--few-shot", metavar="PATH", help="examples file for few-shot (default: the demo train set)")
    parser.add_argument("--k", type=int, help="retrieved passages per RAG prompt (default 3)")
    parser.add_argument("--shots", type=int, help="worked examples per few-shot prompt (default 3)")
    parser.add_argument("--selection", choices=("similar", "fixed", "random"),
                        help="how few-shot examples are picked (default similar)")
    parser.add_argument("--dense", action="store_true", help="retrieve by embeddings only (default: hybrid)")
    parser.add_argument("--model", help="base model: registry name, hub id or folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--system", help="system prompt (default: the model's own)")
    parser.add_argument("--max-new-tokens", type=int, help="most tokens per answer (default 128; eval 64)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass when temperature > 0")
    parser.add_argument("--repetition-penalty", type=float, help=">= 1.0 (default 1.0 = off)")
    parser.add_argument("--stop", action="append", default=[], help="a string that ends an answer (repeatable)")
    parser.add_argument("--batch-size", type=int, help="most rows per generate call (default 8)")
    parser.add_argument("--seed", type=int, help="seed for random few-shot picks and sampling")


def arena_config_from_args(args: argparse.Namespace, *, max_new_tokens: int = 128):
    from core.arena import DEFAULT_VARIANTS, ArenaConfig
    from core.generation import GenerationConfig

    generation = {"max_new_tokens": max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
                  "stop": args.stop}
    for flag, key in (("temperature", "temperature"), ("top_p", "top_p"),
                      ("repetition_penalty", "repetition_penalty"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            generation[key] = getattr(args, flag)
    values: dict[str, Any] = {
        "variants": args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS),
        "adapters": args.adapter, "index": args.index, "few_shot_pool": args.few_shot, "hybrid": not args.dense,
        "system_prompt": args.system, "generation": GenerationConfig(**generation)}
    for flag, key in (("k", "rag_k"), ("shots", "few_shot_k"), ("selection", "few_shot_selection"),
                      ("batch_size", "max_batch_size"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    return ArenaConfig(**values)


def _arena_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query", required=True, help="the question or instruction")
    parser.add_argument("--reference", help="the expected answer (scores are n/a without one)")
    parser.add_argument("--input", default="", help="text the instruction applies to (e.g. a message to summarise)")
    parser.add_argument("--task", help="task name, e.g. classification (scores accuracy on the label)")
    _variant_arguments(parser)


def cmd_arena(args: argparse.Namespace) -> dict[str, Any]:
    from core.engine import Engine

    config = arena_config_from_args(args)
    engine = Engine()
    result = engine.arena(args.query, config, reference=args.reference, task=args.task, input_text=args.input,
                          model=args.model)
    return result.to_dict()


def _human_arena(result: dict[str, Any]) -> None:
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


cmd_arena.arguments = _arena_arguments  # type: ignore[attr-defined]
cmd_arena.human = _human_arena  # type: ignore[attr-defined]
command("arena", "one query through zero-shot, few-shot, RAG, fine-tuned and fine-tuned+RAG, side by side")(cmd_arena)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="test set: .jsonl/.json/.csv/.tsv with reference answers "
                                       "(default: the demo test split)")
    parser.add_argument("--out", help="folder for the results (default: a new folder under the workspace's evals/)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples")
    parser.add_argument("--tasks", help="comma-separated task names to keep (e.g. qa,classification)")
    _variant_arguments(parser)


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from core.data import demo_path
    from core.engine import Engine

    config = arena_config_from_args(args, max_new_tokens=64)
    engine = Engine()
    progress = _StageProgress()
    tasks = [task.strip() for task in args.tasks.split(",")] if args.tasks else None
    data = args.data or str(demo_path("test.jsonl"))
    result = engine.evaluate(data, config, out=args.out, limit=args.limit, tasks=tasks, model=args.model,
                             on_progress=progress)
    return result.contract()


def _human_eval(result: dict[str, Any]) -> None:
    print(f"eval_dir: {result['eval_dir']}  ({result['n']} examples, {result['wall_s']} s)")
    for variant, metrics in result["summary"].items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                          if v is not None and k not in ("generate_s", "new_tokens"))
        print(f"{variant}: {shown}")


cmd_eval.arguments = _eval_arguments  # type: ignore[attr-defined]
cmd_eval.human = _human_eval  # type: ignore[attr-defined]
command("eval", "run variants over a test set; per-example scores and a summary with 95% intervals")(cmd_eval)


# --------------------------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage first by default)
        raise CliError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Tune Arena command line")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (_, add_arguments, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    return parser


def _print_human(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "transformers", "sentence_transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        result = COMMANDS[args.command][0](args)
    except (CliError, DataError, ModelNotFoundError, ValueError, TrainingOutOfMemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        getattr(COMMANDS[args.command][0], "human", _print_human)(result)
    return 0
