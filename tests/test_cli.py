"""The CLI contract: --json prints exactly one document; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_data_json_counts_rows_per_task(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b", "task": "qa"}\n{"instruction": "c", "output": "d"}\n')
    assert main(["data", "--data", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1
    assert result["rows"] == 2 and result["shape"] == "alpaca"
    assert result["tasks"] == {"qa": 1, "default": 1}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["data", "--data", "{missing}"], "missing.jsonl"),
        (["data", "--data", "{bad}"], "line 2"),
        (["data"], "--data"),
        (["no-such-command"], "invalid choice"),
        (["models", "--model", "./not/a/folder"], "not/a/folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    argv = [a.format(missing=tmp_path / "missing.jsonl", bad=bad) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert needle in lines[0]


def test_python_dash_m_core_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "core", "data", "--data", str(ROOT / "assets/demo/test.jsonl"),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rows"] == 100
    assert set(result["tasks"]) == {"qa", "summarization", "classification"}
