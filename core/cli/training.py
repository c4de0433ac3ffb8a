"""Commands about models, data and training: ``models``, ``data``, ``methods``, ``train`` and ``runs``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from core.cli.common import CliError, Command, Delegated, EngineFactory, Result, StepProgress
from core.cli.launch import inside_launch, launch
from core.cli.options import Option, add_options, field_names, option_values
from core.data import SHAPES
from core.distributed import current
from core.methods import METHODS
from core.runs import new_run_id
from core.training import OBJECTIVES, SCHEDULERS, TrainingConfig, list_presets
from core.training.config import TEACHER_CONTEXTS

logger = logging.getLogger(__name__)


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="base model: registry name, hub id, folder or .gguf (default: SmolLM2)")
    parser.add_argument("--prepare", action="store_true",
                        help="load the model now (converting and caching a GGUF once) and report load times")


def cmd_models(args: argparse.Namespace, engine: EngineFactory) -> Result:
    return engine().model_info(args.model, prepare=args.prepare)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset file: .jsonl, .json, .csv or .tsv")
    parser.add_argument("--shape", default="auto", help=f"auto, {', '.join(SHAPES)} (default: auto)")
    parser.add_argument("--no-answers", action="store_true", help="accept rows without a reference answer")


def cmd_data(args: argparse.Namespace, engine: EngineFactory) -> Result:
    return engine().dataset_summary(args.data, shape=args.shape, require_output=not args.no_answers)


def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", help="show one method's settings")


def cmd_methods(args: argparse.Namespace, engine: EngineFactory) -> Result:
    return engine().method_catalogue(args.method)


# ---- train ---------------------------------------------------------------------------------------------------------

TRAIN_OPTIONS = (
    Option("data", note="required unless --resume"),
    Option("method", note=f"one of {', '.join(METHODS)}"),
    Option("objective", choices=tuple(OBJECTIVES)),
    Option("teacher_context", choices=TEACHER_CONTEXTS),
    Option("base_model", "--model"),
    Option("system_prompt", "--system"),
    Option("learning_rate", "--lr"),
    Option("scheduler", choices=SCHEDULERS),
)
TRAIN_EXCLUSIVE = ("epochs", "max_steps")  # one or the other
TRAIN_SKIPPED = ("method_config",)  # --set KEY=VALUE


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"settings from assets/presets: {', '.join(list_presets())}")
    names = field_names(TrainingConfig, exclude=TRAIN_SKIPPED)
    cut = names.index(TRAIN_EXCLUSIVE[0])  # the fields in their order, epochs | max_steps in a group of their own
    prefix = "the preset's, else "
    add_options(parser, TrainingConfig, names[:cut], options=TRAIN_OPTIONS, default_prefix=prefix)
    add_options(parser.add_mutually_exclusive_group(), TrainingConfig, TRAIN_EXCLUSIVE, default_prefix=prefix)
    add_options(parser, TrainingConfig, [name for name in names[cut:] if name not in TRAIN_EXCLUSIVE],
                options=TRAIN_OPTIONS, default_prefix=prefix)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a method setting, e.g. --set r=16 --set target_modules=q_proj,v_proj (repeatable)")
    parser.add_argument("--out", help="the run folder to create (default: a new folder under the workspace's runs/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run from its checkpoint "
                                                            "(a run folder, or a run id of the workspace)")


def training_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingConfig fields given as flags, and ``method_config`` from ``--set KEY=VALUE``."""
    values = option_values(args, field_names(TrainingConfig, exclude=TRAIN_SKIPPED))
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
    return values


def _run_ref(text: str, runs: str | None = None, *, folder_first: bool = False) -> str:
    """A run as the engine takes it: ``RUN`` under ``--runs DIR`` is the folder DIR/RUN; with ``folder_first``
    (``--resume RUN_DIR``, always a folder before the engine) a bare name that is a run folder in the current
    directory stays that folder; anything else is the engine's (a run id of the workspace, or a folder path)."""
    if "/" in text or "\\" in text:
        return text
    if runs:
        return str(Path(runs) / text)
    if folder_first and (Path(text) / "config.json").is_file():
        return os.path.join(".", text)
    return text


def cmd_train(args: argparse.Namespace, engine: EngineFactory) -> Result:
    stop = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:  # first Ctrl-C: stop after this step and save
        if stop.is_set():
            raise KeyboardInterrupt
        logger.warning("stopping after the current step (Ctrl-C again to abort)")
        stop.set()

    values = None if args.resume else training_values(args)  # flags checked before the workspace is opened
    if values is not None and inside_launch() and "num_processes" not in values:  # accelerate launch / torchrun:
        values["num_processes"] = current().size  # the global batch is batch_size per process, as with the flag
    config = None if values is None else engine().training_config(values, preset=args.preset)
    processes = _processes(args, config, engine)
    if processes > 1:  # this command again in that many processes, one data-parallel job (core.cli.launch)
        raise Delegated(launch(_launch_argv(args, config, engine), processes))
    progress = StepProgress()
    callbacks = {"on_step": progress.step, "on_eval": progress.eval, "stop_event": stop}
    if not current().is_main:  # a data-parallel job's other processes: rank 0 shows the progress
        callbacks.update(on_step=None, on_eval=None)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        if config is None:
            result = engine().resume(_run_ref(args.resume, folder_first=True), **callbacks)
        else:
            result = engine().train(config, run_dir=args.out, **callbacks)
    finally:
        signal.signal(signal.SIGINT, previous)
    logger.info("run %s %s: %d/%d steps, %.0f tokens/s, %s", result.run_id, result.state, result.steps,
                result.total_steps, result.tokens_per_s, result.run_dir)
    return result.contract()


def _processes(args: argparse.Namespace, config: TrainingConfig | None, engine: EngineFactory) -> int:
    """How many processes this command must launch: none inside a launched job; else ``--num-processes``, or for
    ``--resume`` the run's own count when the flag is not given."""
    if inside_launch():
        return 1
    if config is not None:
        return config.num_processes
    if args.num_processes is not None:
        return args.num_processes
    found = engine().find_run(_run_ref(args.resume, folder_first=True))
    return int(found.config.get("num_processes") or 1)


def _launch_argv(args: argparse.Namespace, config: TrainingConfig | None, engine: EngineFactory) -> list[str]:
    """The command line every process runs: this one, with the run folder chosen here for a new run (so every
    process writes to, or reads, the same one), after the checks that fail before any process starts: a new run's
    are ``Engine.check_training``'s (the data read and encoded, a distillation teacher found); a resumed run must be
    resumable."""
    argv = list(args.argv)
    if config is None:
        found = engine().check_resume(_run_ref(args.resume, folder_first=True))
        if args.num_processes is None:
            argv += ["--num-processes", str(found.config.get("num_processes") or 1)]
        return argv
    engine().check_training(config)
    if not args.out:
        argv += ["--out", str(engine().workspace.runs / new_run_id(config.method))]
    return argv


# ---- runs ----------------------------------------------------------------------------------------------------------


def _runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", help="the runs folder (default: the workspace's runs/)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--delete", metavar="RUN", help="delete a run (id or folder)")
    action.add_argument("--merge", metavar="RUN", help="merge a LoRA-family run into the base and export it to --out")
    parser.add_argument("--out", help="with --merge: the folder for the merged model (default: the workspace's "
                                      "exports/<run>-merged)")


def cmd_runs(args: argparse.Namespace, engine: EngineFactory) -> Result:
    if args.delete:
        engine().delete_run(_run_ref(args.delete, args.runs))
        return {"deleted": args.delete}
    if args.merge:
        out = engine().merge_run(_run_ref(args.merge, args.runs), args.out)
        return {"merged": args.merge, "out": str(out)}
    return {"runs": engine().list_runs(args.runs)}


COMMANDS = (
    Command("models", "show where the base and embedding models come from; --prepare converts and caches",
            _models_arguments, cmd_models),
    Command("data", "validate a dataset file and count its rows per task", _data_arguments, cmd_data),
    Command("train", "fine-tune the base model with one method; --resume continues a stopped or killed run",
            _train_arguments, cmd_train),
    Command("methods", "list the fine-tuning methods, their settings and the presets", _methods_arguments,
            cmd_methods),
    Command("runs", "list training runs; --delete one; --merge one into the base model and export it",
            _runs_arguments, cmd_runs),
)
