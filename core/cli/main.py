"""The parser and ``main``: parse, make one unconfined Engine, run the command, print its result.

Exit codes: 0 done; 2 a bad argument or bad input (core.errors.TuneArenaError, CliError among them): one line
``error: ...`` on stderr; 1 anything else, which is a bug: one line saying so, then the traceback, on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import traceback

from core.cli.arena import COMMANDS as ARENA_COMMANDS
from core.cli.benchmarks import COMMANDS as BENCHMARK_COMMANDS
from core.cli.common import CliError, Command, Delegated, Result
from core.cli.feedback import COMMANDS as FEEDBACK_COMMANDS
from core.cli.knowledge import COMMANDS as KNOWLEDGE_COMMANDS
from core.cli.training import COMMANDS as TRAINING_COMMANDS
from core.distributed import current
from core.engine import Engine
from core.errors import TuneArenaError

COMMANDS: tuple[Command, ...] = (*TRAINING_COMMANDS, *KNOWLEDGE_COMMANDS, *ARENA_COMMANDS, *FEEDBACK_COMMANDS,
                                  *BENCHMARK_COMMANDS)
QUIET_LOGGERS = ("httpx", "urllib3", "huggingface_hub", "transformers", "sentence_transformers", "faiss")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage first by default)
        raise CliError(f"{self.prog}: {message}")


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    """``python -m core``'s parser; each sub-parser carries its Command as ``args.command``."""
    parser = _Parser(prog="python -m core", description="Tune Arena command line")
    subparsers = parser.add_subparsers(dest="name", metavar="command", required=True, parser_class=_Parser)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help.replace("%", "%%"), description=command.help)
        command.arguments(sub)
        sub.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
        sub.set_defaults(command=command)
    return parser


def _print_human(result: Result) -> None:
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def run(args: argparse.Namespace) -> Result:
    """Run the parsed command on one unconfined Engine (workspace: ``$TUNE_ARENA_WORKSPACE``), made when the
    command first asks for it."""
    return args.command.run(args, functools.cache(Engine))


def main(argv: list[str] | None = None) -> int:
    """``python -m core ...``; returns the exit code."""
    _configure_logging()
    follower = current().rank != 0  # a data-parallel job's other processes: rank 0 prints the result and errors
    if follower:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for --num-processes: the same command again
        result = run(args)
        if follower:
            return 0
        if args.json:
            print(json.dumps(result))
        else:
            (args.command.human or _print_human)(result)
    except Delegated as done:
        return done.code
    except TuneArenaError as err:  # CliError is one
        if not follower:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as err:  # noqa: BLE001 - anything else is a bug: say so, with the traceback
        print(f"error: internal error (a bug; please report it): {_first_line(err)}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMANDS", "build_parser", "main", "run"]
