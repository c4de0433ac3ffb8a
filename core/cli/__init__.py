"""``python -m core <command> ... [--json]``: progress on stderr; with --json exactly one JSON document on stdout.

Every command is a thin adapter over one unconfined ``core.engine.Engine``; flags of config fields come from the
config dataclasses' metadata (core.cli.options). Bad arguments or bad input exit with code 2 and one line on stderr
saying what and where; anything else is a bug (exit 1, with the traceback).
"""

from core.cli.common import CliError, Command
from core.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "CliError", "Command", "build_parser", "main"]
