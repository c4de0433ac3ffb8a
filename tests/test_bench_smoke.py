"""The benchmarks' smoke modes: each `python -m bench.<name> --smoke` runs offline on the bundled models and writes
its result file. No timing is asserted: figures are checked by the benchmarks themselves, not by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "bench" / "results" / "smoke"


def _run_bench(name: str, home: Path, *args: str) -> dict:
    env = {**os.environ, "TUNE_ARENA_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    result_file = SMOKE / f"{name}.json"
    result_file.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result_file.is_file(), proc.stdout[-2000:]
    return json.loads(result_file.read_text())


@pytest.mark.integration
def test_memory_bench_smoke(bundled_home):
    """Each arm trains in its own process and ends where the loop as it was ends."""
    result = _run_bench("memory", bundled_home)
    arms = {row["arm"]: row for row in result["summary"]}
    from bench.memory import DEFAULT_ARM

    assert set(arms) == {"before", "input_cast", DEFAULT_ARM}
    for row in result["runs"]:
        assert row["peak_rss_mib"] > 100 and row["process_peak_mib"] >= row["peak_rss_mib"] - 50
        assert row["tokens_per_s"] > 0
    # one step of batch 2 at 128 tokens: LeanDropout's draws (and bf16 LoRA inputs) move the loss within noise
    before = arms["before"]["final_val_loss"]
    for name in ("input_cast", DEFAULT_ARM):
        assert abs(arms[name]["final_val_loss"] - before) <= 0.01 * before, name


@pytest.mark.integration
def test_train_bench_smoke(bundled_home):
    # the contenders named: LLaMA-Factory joins the default list wherever its CLI is found
    result = _run_bench("train", bundled_home, "--contenders", "ours,trl,hf")
    assert result["benchmark"] == "train" and result["smoke"] is True
    contenders = {c["contender"]: c for c in result["contenders"]}
    assert set(contenders) == {"ours", "trl", "hf"}
    for entry in contenders.values():
        assert isinstance(entry["tokens_per_s"], float) and entry["tokens_per_s"] > 0
        assert isinstance(entry["val_loss"], float) and entry["val_loss"] > 0
    assert result["targets"] and all(isinstance(t["met"], bool) for t in result["targets"])


@pytest.mark.integration
def test_arena_bench_smoke(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    result = _run_bench("arena", bundled_home)
    assert result["benchmark"] == "arena" and result["smoke"] is True
    summary = result["summary"]
    assert summary["variants"] == ["zero_shot", "finetuned"] and summary["rows"] == 2
    assert summary["identical_answers"] == summary["rows"]  # batched and one-by-one give the same greedy answers
    assert summary["batched_generate_calls"] == 1 and summary["one_by_one_generate_calls"] == 2
    assert summary["batched_s"] > 0 and summary["one_by_one_s"] > 0 and summary["speedup"] > 0
    assert summary["batched_tokens_per_s"] > 0 and summary["one_by_one_tokens_per_s"] > 0
    assert isinstance(summary["target_met"], bool) and summary["target"] == 2.5
    assert len(result["loadavg_before"]) == 3 and "load" not in result  # smoke skips the cold load


@pytest.mark.integration
def test_retrieval_bench_smoke(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    result = _run_bench("retrieval", bundled_home)
    assert result["benchmark"] == "retrieval" and result["smoke"] is True
    corpus = result["demo_corpus"]
    assert corpus["chunks"] > 0 and all(row["chunks_per_s"] > 0 for row in corpus["embedding"])
    build = corpus["index_build"]
    assert build["full_s"] > 0 and build["full_embedded"] == build["chunks"] > 0
    assert build["reindex_embedded"] == 0  # nothing changed, nothing embedded again
    rows = result["scale"]["rows"]
    assert {(row["data"], row["chunks"], row["index"]) for row in rows} == {
        ("clustered", 1000, "flat"), ("clustered", 1000, "hnsw"), ("clustered", 1000, "ivf")}
    for row in rows:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
        assert row["build_s"] >= 0
    assert next(row for row in rows if row["index"] == "flat")["recall_at_10"] == 1.0
    assert 0.0 <= result["hnsw_recall_at_10"]["clustered-1000"] <= 1.0


@pytest.mark.integration
def test_eval_bench_smoke(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    result = _run_bench("eval", bundled_home)
    assert result["benchmark"] == "eval" and result["smoke"] is True
    summary = result["summary"]
    assert summary["examples"] == 2 and summary["cells"] == 4 and summary["available_cells"] == 4
    assert summary["s_per_example"] > 0 and summary["s_per_cell"] > 0
    assert 0.0 < summary["generate_share"] <= 1.0 and 0.0 <= summary["metrics_share"] < 1.0
    assert summary["generate_share"] + summary["metrics_share"] <= 1.0 + 1e-3
    assert [row["variant"] for row in result["per_variant"]] == ["zero_shot", "finetuned"]


@pytest.mark.integration
def test_methods_bench_smoke(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    result = _run_bench("methods", bundled_home)
    assert result["benchmark"] == "methods" and result["smoke"] is True
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"lora", "ia3", "(base, zero_shot)"}
    for name in ("lora", "ia3"):
        row = rows[name]
        assert row["error"] is None and row["tokens_per_s"] > 0 and row["val_loss"] > 0 and row["weights_MB"] > 0
        assert row["peak_mem_MiB"] > 0 and 0 <= row["rougeL"] <= 1
    assert rows["ia3"]["trainable_%"] < rows["lora"]["trainable_%"]  # IA3 trains scales, LoRA matrices
    assert 0 <= rows["(base, zero_shot)"]["rougeL"] <= 1


@pytest.mark.integration
def test_benchmarks_bench_smoke(bundled_home):
    result = _run_bench("benchmarks", bundled_home)
    backends = {row["backend"]: row for row in result["backends"]}
    assert set(backends) == {"hf", "engine"}
    assert all(row["tokens"] > 0 and row["tokens_per_s"] > 0 for row in backends.values())
    assert result["answers"] == 8 and 0 <= result["answers_identical"] <= 8
    assert result["loglikelihood"]["requests"] == 32 and result["decision"]
    versus = result["versus_lm_eval"]  # the harness as it ships (batch 1 and 16) against the engine
    assert set(versus) == {"lm_eval_hf_batch_1", "lm_eval_hf_batch_16", "engine"}
    assert all(row["tokens"] > 0 for row in versus.values())
    fastest_plain = max(versus["lm_eval_hf_batch_1"]["tokens_per_s"], versus["lm_eval_hf_batch_16"]["tokens_per_s"])
    assert result["speedup_vs_lm_eval"] == pytest.approx(versus["engine"]["tokens_per_s"] / fastest_plain, rel=0.01)


@pytest.mark.integration
def test_gpu_bench_smoke(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("OUT", raising=False)  # no copy of the result file anywhere else
    result = _run_bench("gpu", bundled_home)
    assert result["benchmark"] == "gpu" and result["smoke"] is True
    steps = {row["step"]: row for row in result["steps"]}
    assert set(steps) == {"a_cuda", "a_model", "b_lora_bf16", "b_lora_fp16", "c_qlora", "e_ours_vs_trl",
                          "g_data_parallel", "d_generation", "f_evaluation", "f_evaluation_vllm"}
    for row in steps.values():  # every step has its figures or the reason it has none
        assert row["status"] in ("ok", "skipped", "error")
        assert row["figures"] if row["status"] == "ok" else row["reason"], row
        assert row["seconds"] >= 0 and row["estimate_h100_s"] > 0
    assert result["errors"] == 0, [row["reason"] for row in steps.values() if row["status"] == "error"]
    assert isinstance(steps["a_cuda"]["figures"]["cuda_available"], bool)
    assert steps["a_cuda"]["figures"]["vllm"]  # a version, or "not installed"
    if not steps["a_cuda"]["figures"]["cuda_available"]:
        assert {name for name, row in steps.items() if row["status"] == "skipped"} >= {
            "b_lora_fp16", "c_qlora", "e_ours_vs_trl", "g_data_parallel", "f_evaluation_vllm"}
        assert steps["b_lora_fp16"]["reason"] == "no CUDA"
    lora = steps["b_lora_bf16"]["figures"]
    assert lora["loss_finite"] and lora["tokens_per_s"] > 0 and lora["peak_mem_mib"] > 0
    generation = steps["d_generation"]["figures"]["decoders"]
    assert set(generation) == {"auto", "hf"} and all(row["rows"] == 2 for row in generation.values())
    evaluation = steps["f_evaluation"]["figures"]
    assert evaluation["cells"] == 4 and evaluation["examples_per_s"] > 0 and evaluation["tokens_per_s"] > 0


@pytest.mark.integration
def test_distributed_bench_smoke(bundled_home):
    result = _run_bench("distributed", bundled_home)
    one, two, sharded = result["runs"]
    assert (one["world_size"], two["world_size"], sharded["world_size"]) == (1, 2, 2)
    assert sharded["fsdp"] and not two["fsdp"] and one["global_batch"] == two["global_batch"] == sharded["global_batch"]
    assert one["tokens_per_s"] > 0 and two["tokens_per_s"] > 0 and sharded["tokens_per_s"] > 0
    # the same steps; bf16 autocast rounds a batch of 2 padded rows and two batches of 1 differently (2.4e-2 seen),
    # fp32 agrees to 1e-6 (tests/test_distributed.py)
    assert result["max_loss_difference"] < 0.1


def test_leaderboard_bench_smoke(tmp_path):
    """No models: synthetic votes from known ratings, fitted by the product's leaderboard."""
    result = _run_bench("leaderboard", tmp_path)
    row = result["rows"][0]
    assert result["benchmark"] == "leaderboard" and row["votes"] == 60 and row["fit_s"] > 0
    assert -1.0 <= row["spearman"] <= 1.0 and row["max_error"] >= 0
