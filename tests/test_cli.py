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


CONTRACT_KEYS = {"run_dir", "method", "trainable_params", "total_params", "adapter_bytes", "train_loss",
                 "final_train_loss", "final_val_loss", "tokens_per_s", "peak_mem_bytes", "wall_s"}


def _tiny_data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    rows = [{"instruction": f"Which pod goes in slot {i}?", "output": f"Slot {i} takes a basil pod.", "task": "qa"}
            for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_json_follows_the_contract_then_runs_lists_and_deletes(tmp_path, tiny_model_dir, capsys):
    data, out = _tiny_data(tmp_path), tmp_path / "runs" / "first"
    argv = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--method", "lora", "--max-steps", "3",
            "--batch-size", "4", "--set", "r=4", "--set", "target_modules=q_proj,v_proj", "--out", str(out),
            "--dtype", "fp32", "--max-eval-examples", "5", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert CONTRACT_KEYS <= set(result)
    assert result["run_dir"] == str(out) and result["method"] == "lora" and len(result["train_loss"]) == 3
    assert json.loads((out / "config.json").read_text())["method_config"]["r"] == 4
    assert json.loads((out / "config.json").read_text())["max_eval_examples"] == 5
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert result["adapter_bytes"] == sum(f.stat().st_size for f in (out / "adapter").iterdir())
    assert "step 3/3" in captured.err  # the progress bar went to stderr

    assert main(["runs", "--runs", str(out.parent), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [row["run_id"] for row in listed] == ["first"] and listed[0]["state"] == "completed"
    assert main(["train", "--resume", str(out)]) == 2
    assert "already completed" in capsys.readouterr().err
    assert main(["runs", "--runs", str(out.parent), "--delete", "first", "--json"]) == 0
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "r=abc"], "r: expected int"),
        (["--set", "rank=4"], "rank: not a setting"),
        (["--set", "r"], "--set: expected KEY=VALUE"),
        (["--preset", "no-such-preset"], "preset: unknown preset"),
        (["--method", "lorax"], "method: unknown method"),
        (["--batch-size", "0"], "batch_size: must be"),
        (["--max-eval-examples", "-1"], "max_eval_examples: must be"),
        (["--epochs", "1", "--max-steps", "2"], "not allowed with argument"),
    ],
)
def test_train_bad_arguments_exit_2_before_any_run_exists(tmp_path, tiny_model_dir, capsys, extra, needle):
    runs = tmp_path / "runs"
    argv = ["train", "--data", str(_tiny_data(tmp_path)), "--model", str(tiny_model_dir), "--out",
            str(runs / "r"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not runs.exists()
