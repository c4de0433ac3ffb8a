"""The CLI contract: --json prints exactly one document; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from core.arena import ArenaConfig
from core.cli import build_parser, main
from core.cli.options import Option, add_options, option_values
from core.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """Every command runs on an Engine of this workspace (never ./workspace)."""
    folder = tmp_path / "ws"
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(folder))
    return folder


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
    assert main(["runs", "--runs", str(out.parent), "--merge", "first", "--out", str(tmp_path / "merged"),
                 "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged == {"merged": "first", "out": str(tmp_path / "merged")}
    assert (tmp_path / "merged" / "config.json").is_file()
    assert main(["runs", "--runs", str(out.parent), "--delete", "first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "first"}
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


def test_a_data_parallel_train_checks_its_data_through_the_engine_before_any_launch(tmp_path, tiny_model_dir,
                                                                                    capsys, monkeypatch):
    """`train --num-processes 2` asks Engine.check_training (the CLI reads no data itself): a bad data file is the
    same one line as in one process, and no process is launched."""
    import core.cli.training as cli_training
    from core.engine import Engine

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n', encoding="utf-8")
    argv = ["train", "--data", str(bad), "--model", str(tiny_model_dir), "--device", "cpu", "--max-steps", "1",
            "--out", str(tmp_path / "runs" / "r"), "--json"]
    assert main(argv) == 2
    alone = capsys.readouterr()
    checked: list[TrainingConfig] = []
    check_training = Engine.check_training
    monkeypatch.setattr(Engine, "check_training",
                        lambda self, config: checked.append(config) or check_training(self, config))
    monkeypatch.setattr(cli_training, "launch", lambda argv, processes: pytest.fail("launched with a bad file"))
    assert main([*argv, "--num-processes", "2"]) == 2
    parallel = capsys.readouterr()
    assert alone.out == parallel.out == ""
    errors = [[line for line in run.err.splitlines() if line.startswith("error:")] for run in (alone, parallel)]
    assert errors[0] == errors[1] and len(errors[1]) == 1 and "bad.jsonl line 2" in errors[1][0], errors
    assert [config.num_processes for config in checked] == [2]
    assert not (tmp_path / "runs").exists()


# ---- flags come from the config dataclasses' metadata ----------------------------------------------------------------


def _help(capsys, command: str) -> str:
    assert main([command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


def _field(cls: type, name: str):
    return next(f for f in fields(cls) if f.name == name)


def test_every_help_page_renders(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for command in ("models", "data", "train", "methods", "runs", "index", "search", "retrieval-eval", "arena",
                    "eval"):
        assert command in listing
        assert main([command, "--help"]) == 0 and "--json" in capsys.readouterr().out


def test_train_help_is_the_training_config_metadata(capsys):
    text = _help(capsys, "train")
    for name, flag in (("grad_accum", "--grad-accum"), ("max_eval_examples", "--max-eval-examples"),
                       ("learning_rate", "--lr"), ("base_model", "--model"), ("warmup_ratio", "--warmup-ratio")):
        assert flag in text
        assert " ".join(_field(TrainingConfig, name).metadata["help"].split()) in text, name
    assert "(default: the preset's, else 1)" in text  # grad_accum's dataclass default, shown
    for f in fields(TrainingConfig):  # every scalar field is a flag (method_config is --set)
        if f.name not in ("method_config", "learning_rate", "base_model", "system_prompt"):
            assert "--" + f.name.replace("_", "-") in text, f.name


def test_arena_help_is_the_arena_and_generation_config_metadata(capsys):
    text = _help(capsys, "arena")
    for name, flag in (("rag_k", "--k"), ("few_shot_k", "--shots"), ("max_batch_size", "--batch-size")):
        assert f"{flag} " in text and " ".join(_field(ArenaConfig, name).metadata["help"].split()) in text, name
    assert "--dense retrieve by embeddings only (hybrid off: retrieval fuses BM25 with embeddings)" in text
    assert "--max-new-tokens MAX_NEW_TOKENS Most tokens to generate (1-2048) (default: 128)" in text
    assert "(default: 64)" in _help(capsys, "eval")  # eval's own default for max_new_tokens


def test_a_field_added_to_a_dataclass_becomes_a_flag():
    @dataclass
    class Settings:
        warmup_steps: int = field(default=3, metadata={"help": "Steps of warmup, ~5% of a run"})
        label: str | None = field(default=None, metadata={"help": "A label"})
        packed: bool = field(default=True, metadata={"help": "Pack short rows together"})
        tags: list[str] = field(default_factory=list, metadata={"help": "A tag (repeatable)"})
        ratio: float = field(default=0.5, metadata={"help": "A ratio"})

    parser = argparse.ArgumentParser()
    options = add_options(parser, Settings, options=[Option("ratio", "--r"), Option("packed", "--loose", invert=True)])
    assert [option.flag for option in options] == ["--warmup-steps", "--label", "--loose", "--tags", "--r"]
    help_text = " ".join(parser.format_help().split())
    assert "--warmup-steps WARMUP_STEPS Steps of warmup, ~5% of a run (default: 3)" in help_text
    assert "--loose packed off: Pack short rows together" in help_text
    assert option_values(parser.parse_args([]), options) == {}  # nothing given: the dataclass decides
    args = parser.parse_args(["--warmup-steps", "7", "--label", "x", "--loose", "--tags", "a", "--tags", "b",
                              "--r", "0.25"])
    values = option_values(args, options)
    assert values == {"warmup_steps": 7, "label": "x", "packed": False, "tags": ["a", "b"], "ratio": 0.25}
    assert Settings(**values).ratio == 0.25


def test_a_field_that_cannot_be_a_flag_is_a_bug_of_the_caller():
    @dataclass
    class Nested:
        inner: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="Nested.inner"):
        add_options(argparse.ArgumentParser(), Nested)
    with pytest.raises(TypeError, match="no field 'nope'"):
        add_options(argparse.ArgumentParser(), Nested, options=[Option("nope")])


def test_train_flags_reach_the_training_config(tmp_path):
    from core.cli.training import training_values

    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--lr", "0.001", "--model", "m", "--max-steps",
                                      "3", "--no-group-by-length", "--objective", "sft", "--set", "r=4"])
    values = training_values(args)
    assert values == {"data": "d.jsonl", "learning_rate": 0.001, "base_model": "m", "max_steps": 3,
                      "group_by_length": False, "objective": "sft", "method_config": {"r": "4"}}
    config = TrainingConfig.build(values, preset="quick-lora")
    assert config.learning_rate == 0.001 and config.group_by_length is False and config.method_config["r"] == 4


def test_arena_flags_reach_the_arena_config():
    from core.cli.arena import arena_config

    args = build_parser().parse_args(["arena", "--query", "q", "--variants", "zero_shot,rag", "--k", "2", "--dense",
                                      "--stop", "A", "--stop", "B", "--seed", "5", "--adapter", "r1", "--adapter",
                                      "r2", "--variants", "zero_shot,finetuned@r1"])
    config = arena_config(args)
    assert config.variants == ["zero_shot", "finetuned@r1"] and config.adapters == ["r1", "r2"]
    assert config.rag_k == 2 and config.hybrid is False and config.seed == 5
    assert config.generation.stop == ["A", "B"] and config.generation.seed == 5
    assert config.generation.max_new_tokens == 128 and config.few_shot_k == ArenaConfig().few_shot_k
    eval_args = build_parser().parse_args(["eval", "--variants", "zero_shot"])
    assert arena_config(eval_args).generation.max_new_tokens == 64


# ---- exit codes: 2 for the user's mistakes, 1 for bugs ---------------------------------------------------------------


def test_an_internal_bug_exits_1_with_a_line_and_the_traceback(tmp_path, capsys, monkeypatch):
    from core.engine import Engine

    def broken(self, *args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(Engine, "dataset_summary", broken)
    assert main(["data", "--data", str(tmp_path / "any.jsonl"), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines[0] == "error: internal error (a bug; please report it): TypeError: unsupported operand"
    assert "Traceback (most recent call last)" in captured.err and lines[-1] == "TypeError: unsupported operand"


def test_a_plain_value_error_is_a_bug_not_a_user_error(tmp_path, capsys, monkeypatch):
    from core.engine import Engine

    monkeypatch.setattr(Engine, "dataset_summary", lambda self, *a, **k: int("x"))
    assert main(["data", "--data", str(tmp_path / "any.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: internal error (a bug; please report it): ValueError: ")


def test_methods_and_models_go_through_the_engine(capsys, tiny_model_dir):
    assert main(["methods", "--method", "lora", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["methods"]) == ["lora"] and "quick-lora" in result["presets"]
    assert any(row["name"] == "r" for row in result["methods"]["lora"]["settings"])
    assert main(["models", "--model", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["location"] == str(tiny_model_dir)


def test_index_without_out_is_named_after_the_first_path_and_searched_by_name(tmp_path, workspace, monkeypatch,
                                                                               capsys):
    from retrieval_helpers import FakeEmbedder

    from core.engine import Engine

    embedder = FakeEmbedder()
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: embedder)
    docs = tmp_path / "Mes données (v2)"
    docs.mkdir()
    (docs / "kettles.md").write_text("# Kettles\n\nQuokka kettles boil water in ninety seconds.\n", encoding="utf-8")
    assert main(["index", "--docs", str(docs), "--chunk-size", "64", "--no-context", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["index_dir"]) == workspace / "indexes" / "Mes-donnees-v2" and result["documents"] == 1
    manifest = json.loads((workspace / "indexes" / "Mes-donnees-v2" / "manifest.json").read_text())
    assert manifest["chunking"]["chunk_size"] == 64 and manifest["index"]["contextual"] is False
    assert main(["search", "--index", "Mes-donnees-v2", "--query", "kettles boil", "--k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert [Path(hit["source"]).name for hit in hits] == ["kettles.md"]
    assert main(["search", "--index", "../elsewhere", "--query", "kettles"]) == 2  # a path: not an index folder
    assert capsys.readouterr().err.startswith("error: ")


def test_damaged_saved_files_and_unwritable_folders_are_exit_2_not_bugs(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{garbage")
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run / 'config.json'}: not valid JSON")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    data = _tiny_data(tmp_path)
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(blocker / "run"),
                 "--max-steps", "1"]) == 2
    assert "cannot write in this folder" in capsys.readouterr().err


# ---- eval: the verdict keys of the contract, read from `eval --json` ------------------------------------------------


def test_eval_json_carries_comparisons_verdict_slices_cost_and_the_report(tmp_path, tiny_tokenizer, tmp_path_factory,
                                                                          monkeypatch, capsys, caplog):
    import html
    import logging

    from arena_helpers import FakeEncoder, talkative_model_dir

    from core.models import ModelManager

    monkeypatch.setattr(ModelManager, "embedder", lambda self, name=None: FakeEncoder())
    labels = ["billing", "shipping", "technical"]
    messages = ["I was charged twice for {n} pods", "Where is parcel {n}? It has not come", "Pump {n} makes a noise"]
    qa = [{"instruction": f"How many litres does tank model {n} hold?", "output": f"Tank model {n} holds {n} litres.",
           "task": "qa", "source": "tanks.md", "id": f"q{n}"} for n in range(12)]
    cls = [{"instruction": "Classify the message.", "input": messages[n % 3].format(n=n), "output": labels[n % 3],
            "task": "classification", "id": f"c{n}"} for n in range(12)]
    data, pool = tmp_path / "test.jsonl", tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in qa + cls))
    pool.write_text("".join(json.dumps({**row, "id": f"p{row['id']}"}) + "\n" for row in cls))  # copying: all right
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(data), "--model", str(talkative_model_dir(tmp_path_factory, tiny_tokenizer)),
            "--variants", "zero_shot,few_shot,nearest_answer", "--few-shot", str(pool), "--shots", "1",
            "--max-new-tokens", "2", "--out", str(out), "--report", "html", "--json"]
    caplog.set_level(logging.INFO, logger="core.cli.arena")
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)

    report = out / "report.html"
    assert result["report"] == str(report) and report.is_file()
    assert f"report: {report}" in caplog.messages  # --report html says where it is (on stderr)
    variants = {"zero_shot", "few_shot", "nearest_answer"}
    pairs = result["comparisons"]
    assert {(p["task"], p["metric"], p["test"]) for p in pairs} == {("qa", "rougeL", "permutation"),
                                                                    ("classification", "accuracy", "mcnemar")}
    for task in ("qa", "classification"):  # every pair of the three variants, on the 12 rows of the task
        found = [frozenset((p["a"], p["b"])) for p in pairs if p["task"] == task]
        assert len(found) == 3 and set(found) == {frozenset(("zero_shot", "few_shot")),
                                                  frozenset(("zero_shot", "nearest_answer")),
                                                  frozenset(("few_shot", "nearest_answer"))}
    for pair in pairs:
        assert {"task", "metric", "a", "b", "diff", "ci", "p", "p_holm", "n"} <= set(pair) and pair["n"] == 12
        low, high = pair["ci"]
        assert low <= pair["diff"] <= high and 0 <= pair["p"] <= pair["p_holm"] <= 1
        assert pair["diff"] == pytest.approx(pair["mean_a"] - pair["mean_b"])
    copy_pair = next(p for p in pairs if p["task"] == "classification" and "nearest_answer" in (p["a"], p["b"]))
    assert copy_pair["a"] == "nearest_answer" and copy_pair["mean_a"] == 1.0  # the pool holds every answer

    assert set(result["verdict"]) == {"qa", "classification"}
    for task, verdict in result["verdict"].items():
        assert {"winner", "runner_up", "margin", "ci", "p", "cheapest_equivalent", "sentence"} <= set(verdict)
        assert verdict["winner"] in {"zero_shot", "few_shot"}  # copying is a baseline, never the winner
        assert verdict["n"] == 12 and verdict["sentence"].startswith(f"{task}: ") and verdict["sentence"].endswith(".")
        assert verdict["cheapest_equivalent"] in {"zero_shot", "few_shot"}
        assert html.escape(verdict["sentence"]) in report.read_text(encoding="utf-8")
    classification = result["verdict"]["classification"]
    copying = classification["copying"]
    assert copying["variant"] == "nearest_answer" and copying["mean"] == 1.0 and not copying["beaten"]
    versus = next(p for p in pairs if p["task"] == "classification"
                  and {p["a"], p["b"]} == {"nearest_answer", classification["winner"]})
    assert copying["diff"] == pytest.approx(-versus["diff"]) and copying["p_holm"] == versus["p_holm"]
    assert copying["better"] == (versus["p_holm"] < 0.05 and versus["ci"][0] > 0)
    assert ("copying the nearest training answer does better (1.00)" in classification["sentence"]) == copying["better"]

    assert {name: part["n"] for name, part in result["slices"].items()} == {"knowledge": 12, "behaviour": 12}
    assert set(result["slices"]["knowledge"]["summary"]) == variants  # the qa rows name a source: knowledge

    cost = result["cost"]
    assert set(cost) == variants and all(entry["n"] == 24 for entry in cost.values())
    assert cost["nearest_answer"]["prompt_tokens"] == 0 and cost["nearest_answer"]["new_tokens"] == 0
    assert cost["few_shot"]["prompt_tokens"] > cost["zero_shot"]["prompt_tokens"]  # worked examples cost tokens
    assert not any(entry["training"] or entry["retrieval"] for entry in cost.values())
    assert all(0 < entry["new_tokens"] <= 2 for name, entry in cost.items() if name != "nearest_answer")
    assert json.loads((out / "results.json").read_text())["verdict"] == result["verdict"]
