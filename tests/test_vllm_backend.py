"""vLLM as an optional engine, without vllm and without a GPU: every setting that asks for it is refused with one line
where it cannot run, a run vLLM cannot serve is refused naming it before any model loads, the SamplingParams mapping
and the per-row LoRA routing are plain functions, and the "auto"/"hf" decoders never touch any of it."""

from __future__ import annotations

import importlib.util
import json
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config, write_rows

from core import training
from core.benchmarks import BACKENDS, BASE, BenchmarkConfig, BenchmarkModel, run_benchmark
from core.benchmarks.harness import make_vllm_lm
from core.cli.main import main
from core.engine import Engine
from core.errors import ConfigError, TuneArenaError
from core.inference import DECODERS, AdapterHost, AdapterInfo, GenerationConfig, vllm_serving
from core.inference import host as host_module
from core.inference.generation import Generated
from core.inference.vllm import (
    LoraSpec,
    adapter_rank,
    lora_specs,
    rank_budget,
    sampling_values,
    to_generated,
    vllm_rows,
)
from core.models import load_causal_lm

MISSING = "needs the vllm package on a CUDA machine: pip install vllm"
_find_spec = importlib.util.find_spec


@pytest.fixture
def no_vllm(monkeypatch):
    """vllm not installed, whatever this machine has."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else _find_spec(name, *a))


@pytest.fixture
def vllm_present(monkeypatch):
    """vllm 'installed' and a CUDA GPU 'visible': settings validate; nothing may import vllm for real."""
    spec = ModuleSpec("vllm", None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "vllm" else _find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _run_folder(root: Path, name: str, method: str, *, settings: dict | None = None, objective: str = "sft",
                rank: int = 8, rank_pattern: dict | None = None) -> Path:
    """A run folder as training leaves it (config.json, the method's weights folder), without training."""
    folder = root / name
    weights = folder / {"full": "model", "freeze": "weights"}.get(method, "adapter")
    weights.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": 1, "method": method, "objective": objective,
                                                    "method_config": settings or {}}), encoding="utf-8")
    (folder / "status.json").write_text(json.dumps({"state": "completed"}), encoding="utf-8")
    if weights.name == "adapter":
        (weights / "adapter_config.json").write_text(json.dumps({"r": rank, "rank_pattern": rank_pattern or {}}),
                                                     encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------------------------


def test_decoder_vllm_without_vllm_is_one_line(no_vllm):
    assert "vllm" in DECODERS
    with pytest.raises(ConfigError) as caught:
        GenerationConfig(decoder="vllm")
    assert str(caught.value) == f"decoder: vllm {MISSING}" and "\n" not in str(caught.value)


def test_decoder_vllm_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: ModuleSpec("vllm", None) if name == "vllm" else _find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^decoder: vllm needs a CUDA GPU"):
        GenerationConfig(decoder="vllm")


def test_decoder_vllm_inside_a_data_parallel_job_is_one_line(vllm_present, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"^decoder: vllm runs in one process .* 4 processes; drop --num-processes$"):
        GenerationConfig(decoder="vllm")


def test_benchmark_backend_vllm_without_vllm_is_one_line(no_vllm):
    assert "vllm" in BACKENDS
    with pytest.raises(ConfigError, match=f"^backend: vllm {MISSING}$"):
        BenchmarkConfig(tasks=["tune_arena_probe"], backend="vllm")
    with pytest.raises(TuneArenaError, match=MISSING):
        make_vllm_lm("/nowhere")


def test_cli_benchmark_backend_vllm_without_vllm_exits_2_with_one_line(no_vllm, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    assert main(["benchmark", "--tasks", "tune_arena_probe", "--backend", "vllm", "--json"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"backend: vllm {MISSING}" in errors[0] and captured.out == ""


def test_cli_arena_decoder_vllm_without_vllm_exits_2_with_one_line(no_vllm, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    assert main(["arena", "--query", "hi", "--decoder", "vllm", "--json"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"decoder: vllm {MISSING}" in errors[0]


@pytest.mark.parametrize("method, settings, objective, needle", [
    ("prompt_tuning", {}, "sft", "virtual tokens"),
    ("prefix_tuning", {}, "sft", "virtual tokens"),
    ("ia3", {}, "sft", "IA3"),
    ("adalora", {}, "sft", "ADALORA"),
    ("lora", {"use_dora": True}, "sft", "DoRA"),
    ("lora", {"unfreeze_top": 1}, "sft", "unfreeze_top"),
    ("full", {}, "classification", "classification head"),
])
def test_a_run_vllm_cannot_serve_is_one_line_naming_it(tmp_path, method, settings, objective, needle):
    folder = _run_folder(tmp_path, f"my-{method}-run", method, settings=settings, objective=objective)
    with pytest.raises(ConfigError) as caught:
        vllm_serving(folder)
    message = str(caught.value)
    assert message.startswith(f"adapter: my-{method}-run cannot be served by vLLM: ") and needle in message
    assert "\n" not in message


def test_what_a_plain_lora_is_comes_from_the_method_registry(tmp_path, monkeypatch):
    """vLLM serves a LoRA run exactly when the registry says it shares a batch (Method.mixes_in_batch): a setting
    the registry adds to its exceptions is refused here too, without a second copy of the rule."""
    from core.methods.registry import Method

    folder = _run_folder(tmp_path, "plain", "lora", settings={"r": 8})
    assert vllm_serving(folder).kind == "lora"
    asked: list[dict] = []

    def mixes_in_batch(self, settings=None):
        asked.append(dict(settings or {}))
        return False

    monkeypatch.setattr(Method, "mixes_in_batch", mixes_in_batch)
    with pytest.raises(ConfigError, match="^adapter: plain cannot be served by vLLM: its LoRA settings make it no "
                                          "plain LoRA adapter"):
        vllm_serving(folder)
    assert asked == [{"r": 8}]


def test_how_vllm_serves_lora_full_and_layerwise_runs(tmp_path):
    lora = vllm_serving(_run_folder(tmp_path, "lora", "lora", rank=16, rank_pattern={"q_proj": 32}))
    assert (lora.kind, Path(lora.folder).name, lora.rank) == ("lora", "adapter", 32)
    qlora = vllm_serving(_run_folder(tmp_path, "qlora", "qlora", settings={"bits": 4}))
    assert qlora.kind == "lora" and qlora.rank == 8  # served on the unquantized base
    full = vllm_serving(_run_folder(tmp_path, "full", "full"))
    assert (full.kind, Path(full.folder).name) == ("model", "model")
    freeze = vllm_serving(_run_folder(tmp_path, "freeze", "freeze"))
    assert (freeze.kind, Path(freeze.folder).name) == ("merge", "freeze")  # merged into a model folder first


def test_run_benchmark_refuses_an_unservable_run_before_any_model_loads(vllm_present, tmp_path):
    def never() -> None:
        raise AssertionError("no model may load")

    models = [BenchmarkModel(BASE, never, base_model="SmolLM2-135M-Instruct"),
              BenchmarkModel("good-lora", never, run_dir=str(_run_folder(tmp_path, "good-lora", "lora"))),
              BenchmarkModel("soft-prompt", never, run_dir=str(_run_folder(tmp_path, "soft-prompt",
                                                                           "prompt_tuning")))]
    with pytest.raises(ConfigError, match=r"^adapter: soft-prompt cannot be served by vLLM: .*virtual tokens"):
        run_benchmark(models, BenchmarkConfig(tasks=["tune_arena_probe"], backend="vllm", limit=2))


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("vllm-ws")
    data = write_rows(root / "train.jsonl", [{"instruction": f"Say colour {i}", "output": "red"} for i in range(8)])
    result = training.train(tiny_config(data, tiny_model_dir, method="prompt_tuning", max_steps=1,
                                        method_config={"num_virtual_tokens": 4}), runs_root=root / "runs")
    return Path(result.run_dir)


def test_the_engine_refuses_a_prompt_tuning_run_with_vllm_naming_it(vllm_present, tmp_path, tiny_model_dir,
                                                                     prompt_run, monkeypatch):
    monkeypatch.setattr("core.engine.benchmarks.load_causal_lm", lambda *a, **k: pytest.fail("a model loaded"))
    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    with pytest.raises(ConfigError, match=rf"^adapter: {prompt_run.name} cannot be served by vLLM: Prompt tuning"):
        engine.benchmark(["tune_arena_probe"], adapters=[str(prompt_run)], model=str(tiny_model_dir),
                         backend="vllm", limit=2)


def test_cli_benchmark_of_a_prompt_tuning_run_with_vllm_exits_2_naming_it(vllm_present, capsys, tmp_path,
                                                                          tiny_model_dir, prompt_run, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    assert main(["benchmark", "--tasks", "tune_arena_probe", "--adapter", str(prompt_run), "--model",
                 str(tiny_model_dir), "--backend", "vllm", "--json"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{prompt_run.name} cannot be served by vLLM" in errors[0]


# --------------------------------------------------------------------------------------------------------------------
# Pure pieces: sampling settings, routing, results
# --------------------------------------------------------------------------------------------------------------------


def test_sampling_params_follow_the_generation_config():
    greedy = sampling_values(GenerationConfig(max_new_tokens=32, temperature=0.0, top_p=0.5, repetition_penalty=1.2,
                                              stop=["\n\n", "###"], seed=3), {7, 2})
    assert greedy == {"n": 1, "max_tokens": 32, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.2,
                      "stop": ["\n\n", "###"], "stop_token_ids": [2, 7], "skip_special_tokens": True}
    sampled = sampling_values(GenerationConfig(max_new_tokens=8, temperature=0.7, top_p=0.9, seed=11))
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"], sampled["stop"]) == (0.7, 0.9, 11, [])


def test_base_and_lora_rows_go_to_vllm_and_the_others_to_the_decoder():
    adapters = [None, "lora-a", "soft-prompt", "lora-b", None, "lora-a"]
    servable = {"lora-a": True, "soft-prompt": False, "lora-b": True}
    assert vllm_rows(adapters, servable) == ([0, 1, 3, 4, 5], [2])
    assert vllm_rows(["unknown"], {}) == ([], [0])


def test_each_row_gets_its_adapter_with_an_id_that_stays():
    ids: dict[str, int] = {}
    folders = {"lora-a": "/runs/a/adapter", "lora-b": "/runs/b/adapter"}
    first = lora_specs([None, "lora-b", "lora-a", "lora-b"], folders, ids)
    assert first == [None, LoraSpec("lora-b", 1, "/runs/b/adapter"), LoraSpec("lora-a", 2, "/runs/a/adapter"),
                     LoraSpec("lora-b", 1, "/runs/b/adapter")]
    again = lora_specs(["lora-a", "lora-c"], {**folders, "lora-c": "/runs/c/adapter"}, ids)
    assert [spec.lora_id for spec in again] == [2, 3] and ids == {"lora-b": 1, "lora-a": 2, "lora-c": 3}


def test_a_completion_becomes_a_generated_row():
    eos = to_generated(" Paris. ", [11, 12, 2], 9, "stop", None, {2}, batch_s=0.5, batch_size=4, started_at=10.0)
    assert (eos.text, eos.new_tokens, eos.prompt_tokens, eos.finish, eos.batch_size) == ("Paris.", 2, 9, "eos", 4)
    assert eos.generate_s == 0.5 and eos.started_at == 10.0
    stop = to_generated("Paris", [11, 12, 13], 9, "stop", "###", {2}, batch_s=0.5, batch_size=1, started_at=0.0)
    assert (stop.finish, stop.new_tokens) == ("stop", 3)
    length = to_generated("Paris is", [11, 12], 9, "length", None, {2}, batch_s=0.5, batch_size=1, started_at=0.0)
    assert (length.finish, length.new_tokens) == ("length", 2)


def test_the_lora_rank_budget_holds_every_adapter(tmp_path):
    assert rank_budget([8]) == 64 and rank_budget([100]) == 128 and rank_budget([16], floor=16) == 16
    with pytest.raises(ConfigError, match="rank 600"):
        rank_budget([600])
    folder = _run_folder(tmp_path, "r", "lora", rank=4, rank_pattern={"v_proj": 12}) / "adapter"
    assert adapter_rank(folder) == 12


# --------------------------------------------------------------------------------------------------------------------
# The adapter host
# --------------------------------------------------------------------------------------------------------------------


class FakeGenerator:
    """Stands in for VllmGenerator: records what it was asked, answers by row."""

    max_lora_rank = 64

    def __init__(self) -> None:
        self.lora_ids: dict[str, int] = {}
        self.calls: list[tuple[list[str], list[LoraSpec | None], GenerationConfig]] = []

    def generate(self, prompts, loras, config, stop_ids):
        self.calls.append((list(prompts), list(loras), config))
        return [Generated(f"vllm {i}", 1, 3, 0.1, 0.1, len(prompts), "eos") for i in range(len(prompts))]


@pytest.fixture
def host(tiny_model_dir, tmp_path):
    host = AdapterHost(load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32"))
    host.adapters = {"lora-a": AdapterInfo("lora-a", str(tmp_path / "lora-a"), "lora", True),
                     "ia3-b": AdapterInfo("ia3-b", str(tmp_path / "ia3-b"), "ia3", False)}
    host._vllm_adapters = {"lora-a": ("/runs/lora-a/adapter", 8)}
    return host


def test_the_host_sends_base_and_lora_rows_to_vllm_and_other_runs_to_the_decoder(vllm_present, host, monkeypatch):
    fake = FakeGenerator()
    host._vllm = fake
    monkeypatch.setattr(host, "_separate_model", lambda key: host.base)  # the IA3 run's own model: the base here
    done, streamed = [], {}
    prompts = ["p0", "p1", "p2", "p3"]
    out = host.generate(prompts, [None, "lora-a", "ia3-b", "lora-a"], GenerationConfig(max_new_tokens=3,
                                                                                        decoder="vllm"),
                        on_batch=lambda d, total: done.append((d, total)),
                        on_text=lambda row, text: streamed.__setitem__(row, text))
    assert len(fake.calls) == 1
    sent, loras, config = fake.calls[0]
    assert sent == ["p0", "p1", "p3"] and config.decoder == "vllm"
    assert loras == [None, LoraSpec("lora-a", 1, "/runs/lora-a/adapter"), LoraSpec("lora-a", 1,
                                                                                   "/runs/lora-a/adapter")]
    assert [o.text for o in out[:2]] == ["vllm 0", "vllm 1"] and out[3].text == "vllm 2"
    assert not out[2].text.startswith("vllm")  # the IA3 row went through the engine's decoder
    assert done[-1] == (4, 4) and [d for d, _ in done] == [1, 2, 3, 4]
    assert streamed[0] == "vllm 0" and streamed[3] == "vllm 2"


@pytest.mark.parametrize("decoder", ["auto", "hf"])
def test_auto_and_hf_never_touch_vllm(decoder, host, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("vllm touched")

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: refuse() if name == "vllm" else _find_spec(name, *a))
    monkeypatch.setattr(host_module, "VllmGenerator", refuse)
    host.adapters.pop("lora-a")  # not loaded into the model: the base rows only
    calls = []
    real = host_module.generate_batch
    monkeypatch.setattr(host_module, "generate_batch", lambda *a, **k: calls.append(a[3].decoder) or real(*a, **k))
    out = host.generate(["p0", "p1"], [None, None], GenerationConfig(max_new_tokens=2, decoder=decoder))
    assert len(out) == 2 and calls == [decoder] and host._vllm is None
