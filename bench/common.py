"""Shared by the benchmarks: the machine description, a result writer and a plain-text table printer.

Each benchmark is ``python -m bench.<name> [--smoke]``: it prints a table, writes ``bench/results/<name>.json``
(``--smoke``: tiny sizes, written to ``bench/results/smoke/`` so a CI run never overwrites published figures).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_ticks() -> dict[str, float] | None:
    """Seconds of machine CPU time by kind since boot (/proc/stat), and this process's own (children included)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    fields = stat.read_text().splitlines()[0].split()[1:]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = (int(value) / hz for value in fields[:7])
    own = os.times()
    return {"wall": time.monotonic(), "busy": user + system + irq + softirq, "nice": nice, "idle": idle + iowait,
            "own": own.user + own.system + own.children_user + own.children_system}


_STARTED = _cpu_ticks()  # when the benchmark module was imported


def cpu_shares() -> dict[str, float] | None:
    """How the machine's CPU time was spent since this benchmark started, as shares of all cores' time.

    ``other_jobs``: processes other than this benchmark at normal priority (they slow a timed run down);
    ``niced_jobs``: processes at lower priority (nice > 0), which the scheduler serves after this one.
    """
    now = _cpu_ticks()
    if now is None or _STARTED is None:
        return None
    total = (now["wall"] - _STARTED["wall"]) * (os.cpu_count() or 1)
    if total <= 0:
        return None
    own = now["own"] - _STARTED["own"]
    nice = now["nice"] - _STARTED["nice"]
    busy = now["busy"] - _STARTED["busy"]
    return {"this_benchmark": round(own / total, 3), "other_jobs": round(max(busy - own, 0.0) / total, 3),
            "niced_jobs": round(nice / total, 3), "idle": round((now["idle"] - _STARTED["idle"]) / total, 3)}


# the CPU features that decide which matmul kernels run (oneDNN): the "machine kind" a figure belongs to
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8", "asimd", "sve")


def machine() -> dict[str, Any]:
    """CPU model and matrix flags, cores, bf16 support, GPU, package versions: every result file carries this."""
    import torch
    import transformers

    from core.models import cpu_has_bf16

    cpu, flags = platform.processor(), []
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        present = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        flags = [flag for flag in MATRIX_FLAGS if flag in present]
    memory = None
    if Path("/proc/meminfo").exists():
        total = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = round(int(total.split()[1]) / 2**20, 1)
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "memory_gib": memory,
            "bf16_hardware": cpu_has_bf16(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}


def add_decoder_option(parser: Any) -> None:
    """``--decoder engine|hf``: the engine's batch decoder, or the path before it (one left-padded
    ``model.generate`` per batch) for before/after figures measured by the same script."""
    parser.add_argument("--decoder", choices=("engine", "hf"), default="engine",
                        help="engine: core.inference's batch decoder; hf: one left-padded model.generate per batch "
                             "(the engine's path before it, for before/after figures)")


def generation_config(args: Any, **values: Any) -> Any:
    """A GenerationConfig whose ``decoder`` follows ``--decoder`` (engine: the batch decoder, "auto"; hf: the
    reference path, one left-padded model.generate per batch)."""
    from core.inference import GenerationConfig

    return GenerationConfig(decoder="hf" if args.decoder == "hf" else "auto", **values)


def run_child(module: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """``python -m <module> --child <spec as JSON>`` in a fresh process (its own allocator, its own peak RSS); returns
    the JSON object the child prints last. A failure ends the benchmark with ``what`` and the child's last error line.
    """
    done = subprocess.run([sys.executable, "-m", module, "--child", json.dumps(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"{module}: {what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def write_result(name: str, payload: dict[str, Any], *, smoke: bool = False) -> Path:
    """``bench/results/<name>.json`` (smoke runs: ``bench/results/smoke/<name>.json``), with machine and date."""
    path = RESULTS / ("smoke" if smoke else "") / f"{name}.json"
    write_json(path, {"benchmark": name, "smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M"),
                      "machine": machine(), "cpu_during_run": cpu_shares(), **payload})
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows of dicts as an aligned text table on stdout."""
    if not rows:
        print("(no rows)")
        return
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    table = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in table)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    for line in table:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)))
