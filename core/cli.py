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
from core.models import (
    ModelNotFoundError,
    default_embedding_model,
    load_causal_lm,
    resolve_base_model,
    resolve_embedding_model,
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
    for noisy in ("httpx", "urllib3", "huggingface_hub", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        result = COMMANDS[args.command][0](args)
    except (CliError, DataError, ModelNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print_human(result)
    return 0
