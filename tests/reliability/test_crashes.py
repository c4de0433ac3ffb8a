"""Crashes: a process killed with SIGKILL at any moment never leaves state that reads as something it is not.

Real processes on real files: ``crash_points.py`` (beside this file) runs the CLI or an operation and kills itself
at a chosen file-system write (half of it done), or the test kills a slowed-down run from outside at a random
moment. Covered: training (killed four times, then resumed to the end: same losses and adapter as a run never
killed), checkpoint writes and removals, the run store's view of a killed run (interrupted, deletable, resumable),
a delete cut short, the knowledge-base save and the GGUF -> safetensors model cache (killed at every write in turn).

Kill points drawn at random come from ``TUNE_ARENA_CRASH_SEED`` (a fresh seed when unset; every failure names it).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crash_points import CHUNKING, DOCS_V1, DOCS_V2, write_docs
from retrieval_helpers import FakeEmbedder
from safetensors.torch import load_file
from training_helpers import ROWS, SAMPLE_IDS, SAMPLE_MASK, write_rows

from core import training
from core.io import write_json
from core.models import MARKER, is_complete_cache, load_causal_lm, resolve_base_model
from core.runs import Run, RunStore, process_owner
from retrieval import ChunkingConfig, KnowledgeBase, build_index

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("crash_points.py")
SEED = int(os.environ.get("TUNE_ARENA_CRASH_SEED") or random.SystemRandom().randrange(1_000_000))
NOTE = f"(reproduce with TUNE_ARENA_CRASH_SEED={SEED})"
STEPS = 8
TRAIN_FLAGS = ["--method", "lora", "--set", "dropout=0.0", "--max-steps", str(STEPS), "--batch-size", "2",
               "--lr", "1e-2", "--checkpoint-every", "2", "--seed", "7", "--device", "cpu", "--dtype", "fp32"]
# events of crash_points.py (paths relative to the run folder)
CHECKPOINT_WRITE = r"^(save_file|open|write) checkpoints/\.tmp-|^rename checkpoints/\.tmp-[\w-]+ -> checkpoints/step-"
CHECKPOINT_REMOVAL = (r"^rename checkpoints/step-\d+ -> checkpoints/\.tmp-[\w-]+-deleting-"
                      r"|^rmtree checkpoints/\.tmp-[\w-]+-deleting-")
FINAL_SAVE = r"^(open|write|save_file|rename) \.tmp-(adapter-|result\.json\.)"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT), **extra}


class Cli:
    """``python crash_points.py cli ... -- <core CLI arguments>`` in the background; output kept in files."""

    def __init__(self, folder: Path, name: str, root: Path, args: list[str], *, kill_on: str | None = None,
                 nth: int = 1, slow: float = 0.0, events: Path | None = None) -> None:
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        command = [sys.executable, str(HARNESS), "cli", "--root", str(root), "--kill-nth", str(nth),
                   "--slow", str(slow)]
        command += ["--kill-on", kill_on] if kill_on else []
        command += ["--events", str(events)] if events else []
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen([*command, "--", *args], cwd=ROOT, env=_env(), stdout=out, stderr=err)
        self.pid = self.process.pid

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def killed(self) -> None:
        code = self.wait()
        assert code == -signal.SIGKILL, f"exit {code}, not SIGKILL: {self.err.read_text()[-2000:]} {NOTE}"

    def completed(self) -> dict:
        code = self.wait()
        assert code == 0, f"exit {code}: {self.err.read_text()[-2000:]} {NOTE}"
        return json.loads(self.out.read_text())


# --------------------------------------------------------------------------------------------------------------------
# Training: four kills, then resume to the end
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ROWS)


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())  # atomic writes: always whole JSON


def _logged_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]]
    last = (run_dir / "metrics.jsonl").read_text().splitlines()[-1:]
    try:  # a kill may tear the last line; every other line is whole
        rows += [json.loads(line) for line in last]
    except json.JSONDecodeError:
        pass
    return [row["step"] for row in rows if "loss" in row]


def _check_checkpoint(folder: Path) -> None:
    """Every listed checkpoint loads whole: both safetensors files parse and state.json names its step."""
    assert load_file(str(folder / "trainable.safetensors")), folder
    assert "rng.torch" in load_file(str(folder / "optimizer.safetensors")), folder
    assert json.loads((folder / "state.json").read_text())["step"] == int(folder.name.removeprefix("step-")), folder


def _check_interrupted(run_dir: Path, pid: int, what: str) -> Run:
    """After a kill: status.json still says running (nobody recorded the kill) and names the dead process, but the
    run store reads the run as interrupted and nobody as its owner; every listed checkpoint loads; each step was
    logged once, and the latest checkpoint is no later than the logged steps."""
    status = _status(run_dir)
    assert status["state"] == "running" and status["owner"]["pid"] == pid, f"{what}: {status} {NOTE}"
    store = RunStore(run_dir.parent)
    assert [(run.run_id, run.state) for run in store.list()] == [(run_dir.name, "interrupted")], f"{what} {NOTE}"
    run = store.get(run_dir.name)
    assert run.owned_elsewhere() is None
    for checkpoint in run.checkpoints():
        _check_checkpoint(checkpoint)
    logged = _logged_steps(run_dir)
    assert logged == list(range(1, len(logged) + 1)), f"{what}: steps logged {logged} {NOTE}"
    latest = run.latest_checkpoint()
    assert latest is None or int(latest.name.removeprefix("step-")) <= len(logged), f"{what} {NOTE}"
    return run


def _saves(events: list[str]) -> list[list[int]]:
    """Positions (1-based, among CHECKPOINT_WRITE events) of each checkpoint save's events, in order."""
    saves, current = [], []
    for position, label in enumerate([e for e in events if re.search(CHECKPOINT_WRITE, e)], start=1):
        current.append(position)
        if label.startswith("rename"):
            saves.append(current)
            current = []
    return saves


def test_training_killed_four_times_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, data_file):
    rng = random.Random(SEED)
    logs, reference_dir, run_dir = tmp_path / "logs", tmp_path / "reference" / "run", tmp_path / "runs" / "run"
    logs.mkdir()
    train = ["train", "--data", data_file, "--model", str(tiny_model_dir), *TRAIN_FLAGS, "--json"]
    resume = ["train", "--resume", str(run_dir), "--json"]
    events_file = tmp_path / "reference-events.json"
    reference = Cli(logs, "reference", reference_dir, [*train, "--out", str(reference_dir)],
                    events=events_file).completed()
    events = json.loads(events_file.read_text())
    saves = _saves(events)
    assert len(saves) == STEPS // 2 and reference["state"] == "completed"
    kills: list[str] = []

    # 1. inside the checkpoint save of step 4 or 6: the previous checkpoint stays the latest, and loads
    nth = rng.choice(saves[1] + saves[2])
    killed_save = next(number for number, save in enumerate(saves) if nth in save)
    cli = Cli(logs, "kill1", run_dir, [*train, "--out", str(run_dir)], kill_on=CHECKPOINT_WRITE, nth=nth)
    cli.killed()
    label = [e for e in events if re.search(CHECKPOINT_WRITE, e)][nth - 1]
    kills.append(f"writing checkpoint {2 * killed_save + 2} ({label.split('/')[-1]})")
    run = _check_interrupted(run_dir, cli.pid, kills[-1])
    assert run.latest_checkpoint().name == f"step-{2 * killed_save:08d}", f"{kills[-1]} {NOTE}"
    assert any(p.name.startswith(".tmp-") for p in (run_dir / "checkpoints").iterdir())  # hidden, never listed

    # 2. from outside, at a random moment of a step after the resumed checkpoint
    start = int(run.latest_checkpoint().name.removeprefix("step-"))
    cli = Cli(logs, "kill2", run_dir, resume, slow=0.3)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and cli.process.poll() is None:
        status = _status(run_dir)  # read while another process rewrites it: never half a file
        if status.get("owner", {}).get("pid") == cli.pid and status.get("step", 0) > start:
            break
        time.sleep(0.02)
    assert cli.process.poll() is None, f"the resumed run ended early: {cli.err.read_text()[-2000:]} {NOTE}"
    time.sleep(rng.uniform(0.0, 0.3))
    cli.process.send_signal(signal.SIGKILL)
    cli.killed()
    kills.append(f"from outside after step {_status(run_dir)['step']}")
    run = _check_interrupted(run_dir, cli.pid, kills[-1])

    # 3. while an old checkpoint is removed (keep 2): never a half-deleted step-N
    nth = rng.choice([1, 2])
    cli = Cli(logs, "kill3", run_dir, resume, kill_on=CHECKPOINT_REMOVAL, nth=nth)
    cli.killed()
    kills.append(f"removing an old checkpoint ({('before the rename', 'mid-removal')[nth - 1]})")
    run = _check_interrupted(run_dir, cli.pid, kills[-1])
    assert run.checkpoints(), f"{kills[-1]} {NOTE}"

    # 4. while the final weights and result are written: still not completed
    final_events = [e for e in events if re.search(FINAL_SAVE, e)]
    nth = rng.randint(1, len(final_events))
    cli = Cli(logs, "kill4", run_dir, resume, kill_on=FINAL_SAVE, nth=nth)
    cli.killed()
    kills.append(f"saving the final weights ({final_events[nth - 1]})")
    _check_interrupted(run_dir, cli.pid, kills[-1])

    # resume to the end: the losses and the adapter of the run that was never killed
    result = Cli(logs, "final", run_dir, resume).completed()
    assert (result["state"], result["steps"]) == ("completed", STEPS), NOTE
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1)), NOTE
    assert [(r.run_id, r.state) for r in RunStore(run_dir.parent).list()] == [("run", "completed")]
    losses, expected = torch.tensor(result["train_loss"]), torch.tensor(reference["train_loss"])
    loss_gap = float(((losses - expected).abs() / expected.abs()).max())
    assert loss_gap <= 1e-4, f"losses {result['train_loss']} vs {reference['train_loss']} {NOTE}"
    assert result["final_train_loss"] == pytest.approx(reference["final_train_loss"], rel=1e-4), NOTE
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    expected_weights = load_file(str(reference_dir / "adapter" / "adapter_model.safetensors"))
    assert set(weights) == set(expected_weights)
    weight_gap = max(float((weights[k] - expected_weights[k]).abs().max()) for k in weights)
    assert weight_gap <= 1e-5, f"adapter differs by {weight_gap} {NOTE}"
    print(f"\ntraining killed {len(kills)} times, seed {SEED}: {'; '.join(kills)}; "
          f"max relative loss gap {loss_gap:.2e}, max adapter weight gap {weight_gap:.2e}")


# --------------------------------------------------------------------------------------------------------------------
# The run store's view of killed processes
# --------------------------------------------------------------------------------------------------------------------

OWNER = """
import sys, time
from pathlib import Path
from core.runs import RunStore
run = RunStore(sys.argv[1]).create({"method": "lora"}, sys.argv[2])
(Path(sys.argv[2]) / "checkpoints" / "step-00000002").mkdir(parents=True)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_run_whose_process_was_killed_reads_interrupted_and_can_be_resumed_or_deleted(tmp_path):
    from core.engine import Engine
    from ui.train import resumable_runs

    engine = Engine(tmp_path / "ws")
    store = engine.runs
    process = subprocess.Popen([sys.executable, "-c", OWNER, str(store.root), str(store.root / "r1")], cwd=ROOT,
                               env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        run = store.get("r1")
        assert run.state == "running" and run.owned_elsewhere() == process.pid
        with pytest.raises(ValueError, match="r1 is running"):
            store.delete("r1")
        with pytest.raises(ValueError, match=f"^resume: run r1 is still being trained by process {process.pid}"):
            training.resume(run.path)
        with pytest.raises(ValueError, match="still being trained"):
            engine.jobs.resume(run.path)
        assert resumable_runs(engine) == []  # another live process trains it
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    assert _status(run.path)["state"] == "running"  # nobody recorded the kill...
    assert run.state == "interrupted" and run.owned_elsewhere() is None  # ...but the store reads it right
    assert [(r.run_id, r.state) for r in store.list()] == [("r1", "interrupted")]
    assert resumable_runs(engine) == [("r1 (lora, interrupted at step 0)", "r1")]
    assert engine.list_runs()[0]["state_text"].startswith("interrupted (its process ended")
    store.delete("r1")
    assert not run.path.exists() and store.list() == []


def _write_status(run: Run, owner: dict | None, updated: str | None = None) -> None:
    status = {"state": "running", "step": 3, "updated": updated or time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(run.path / "status.json", {**status, **({"owner": owner} if owner else {})})


def test_owner_checks_survive_pid_reuse_other_hosts_and_status_files_without_an_owner(tmp_path):
    store = RunStore(tmp_path)
    run = store.create({"method": "lora"}, tmp_path / "r")
    me = process_owner()
    assert run.status["owner"] == me and run.state == "running"
    _write_status(run, {**me, "started": me["started"] - 1000})  # the pid was reused by a later process
    assert run.state == "interrupted"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_status(run, {**me, "pid": int(gone.stdout)})
    assert run.state == "interrupted"
    other_host = {**me, "host": f"not-{socket.gethostname()}"}  # cannot be checked: the staleness rule decides
    _write_status(run, other_host)
    assert run.state == "running"
    _write_status(run, other_host, "2020-01-01T00:00:00")
    assert run.state == "interrupted"
    _write_status(run, None)  # a status.json written before owners were recorded
    assert run.state == "running"
    with pytest.raises(ValueError, match="is running"):
        store.delete("r")
    _write_status(run, None, "2020-01-01T00:00:00")
    assert run.state == "interrupted"
    store.delete("r")
    assert store.list() == []


def test_a_delete_killed_midway_leaves_no_ghost_run(tmp_path):
    store = RunStore(tmp_path / "runs")
    for name in ("r1", "r2"):
        run = store.create({"method": "lora"}, store.root / name)
        (run.path / "card.md").write_text("# card")
        (run.path / "adapter").mkdir()
        (run.path / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        run.set_status("stopped", step=2)
    Cli(tmp_path, "delete", store.root, ["runs", "--runs", str(store.root), "--delete", "r1", "--json"],
        kill_on=r"^rmtree \.tmp-r1-deleting-", nth=1).killed()
    leftovers = list(store.root.glob(".tmp-r1-deleting-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "r1" / "config.json").is_file()  # half removed, hidden
    assert [run.run_id for run in store.list()] == ["r2"]
    store.delete("r2")  # sweeps what the killed delete left
    assert list(store.root.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# The knowledge base: killed at every write of an update
# --------------------------------------------------------------------------------------------------------------------


def _sweep(tmp_path: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(HARNESS), "sweep", *args, "--work", str(tmp_path / "work"),
                           "--snapshots", str(tmp_path / "snapshots")], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _content(kb: KnowledgeBase) -> list[tuple[str, str]]:
    return sorted((chunk.source, chunk.text) for chunk in kb.chunks.values())


def _hits(kb: KnowledgeBase) -> list[tuple[str, float]]:
    return [(hit.chunk.text, round(hit.score, 5)) for hit in kb.search("rattling pump cleaning", k=3, hybrid=False)]


def test_index_save_killed_at_every_write_leaves_the_old_or_the_new_index(tmp_path):
    docs = tmp_path / "docs"
    sweep = _sweep(tmp_path, "index", "--docs", str(docs))
    events, kills = sweep["events"], sweep["kills"]
    assert kills == len(events) >= 6
    assert any(re.fullmatch(r"(rename|exchange) \.tmp-kb-\S+ (->|<->) kb", e) for e in events), events
    chunking = ChunkingConfig(**CHUNKING)
    references = {}
    for version, texts in (("v1", DOCS_V1), ("v2", DOCS_V2)):  # the same paths, as the sweep indexed them
        write_docs(docs, texts)
        build_index([docs], tmp_path / "reference" / version, FakeEmbedder(), chunking=chunking)
        kb = KnowledgeBase.load(tmp_path / "reference" / version, FakeEmbedder())
        references[version] = (_content(kb), _hits(kb))
    assert references["v1"][0] != references["v2"][0]
    seen = []
    for n in range(1, kills + 1):
        where = f"killed at event {n} ({events[n - 1]})"
        indexes = tmp_path / "snapshots" / str(n) / "indexes"
        kb = KnowledgeBase.load(indexes / "kb", FakeEmbedder())  # finishes an interrupted swap
        version = next((v for v, (content, _) in references.items() if content == _content(kb)), None)
        assert version is not None, f"{where}: the index holds neither version"
        assert _hits(kb) == references[version][1], where
        seen.append(version)
        assert [p.name for p in indexes.iterdir() if not p.name.startswith(".tmp-")] == ["kb"], where
        build_index([docs], indexes / "kb", FakeEmbedder(), chunking=chunking)  # the next update just works
        assert _content(KnowledgeBase.load(indexes / "kb", FakeEmbedder())) == references["v2"][0], where
    assert "v1" in seen and "v2" in seen, seen  # kills landed on both sides of the swap
    leftovers = [p for p in (tmp_path / "snapshots" / "1" / "indexes").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # what the killed save wrote, hidden; removed once it is clearly abandoned:
    for path in leftovers:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    KnowledgeBase.load(tmp_path / "snapshots" / "1" / "indexes" / "kb", FakeEmbedder())
    assert [p.name for p in (tmp_path / "snapshots" / "1" / "indexes").iterdir()] == ["kb"]
    print(f"\nindex save: killed at each of its {kills} writes; old index kept {seen.count('v1')} times, "
          f"new one {seen.count('v2')} times")


# --------------------------------------------------------------------------------------------------------------------
# The model cache: a tiny GGUF converted, killed at every write
# --------------------------------------------------------------------------------------------------------------------


def write_tiny_gguf(path: Path, tokenizer, model) -> Path:
    """The tiny Llama and its byte-level BPE tokenizer as a GGUF file (F32), the way llama.cpp lays one out."""
    import gguf
    import numpy as np

    config = model.config
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(vocab["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["id"] for added in vocab["added_tokens"]}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in vocab["model"]["merges"]]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(tokenizer.chat_template)
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}

    def permute(weight: np.ndarray, heads: int) -> np.ndarray:  # llama.cpp's rotary layout of q/k rows
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
            weight.shape)

    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_tokenizer) -> tuple[Path, torch.Tensor]:
    """(a tiny .gguf file, the logits of its model on the sample batch)."""
    from tiny_models import build_tiny_llama

    model = build_tiny_llama(len(tiny_tokenizer))
    with torch.no_grad():
        logits = model(input_ids=SAMPLE_IDS, attention_mask=SAMPLE_MASK).logits
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_tokenizer, model), logits


def _cache_logits(home: Path, gguf_file: Path, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("TUNE_ARENA_HOME", str(home))
    model = load_causal_lm(str(gguf_file), device="cpu", dtype="fp32").model
    with torch.no_grad():
        return model(input_ids=SAMPLE_IDS, attention_mask=SAMPLE_MASK).logits


@pytest.mark.parametrize("start", ["empty", "stale"])
def test_model_cache_write_killed_at_every_write_is_complete_or_absent(start, tmp_path, tiny_gguf, monkeypatch):
    """Converting a GGUF into the cache, killed at each write in turn (from an empty cache, and from one that holds
    an unusable copy of an older format): the cache folder is never half there; the next load converts again and
    gives the model's own logits."""
    gguf_file, logits = tiny_gguf
    sweep = _sweep(tmp_path, "cache", "--gguf", str(gguf_file), *(["--stale"] if start == "stale" else []))
    events, kills = sweep["events"], sweep["kills"]
    assert kills == len(events) >= 8
    assert any(e.startswith(("rename models/.tmp-", "exchange models/.tmp-")) for e in events), events
    assert torch.allclose(_cache_logits(tmp_path / "reference", gguf_file, monkeypatch), logits, atol=1e-5)
    cache_name = resolve_base_model(str(gguf_file)).cache_dir.name
    reference_weights = (tmp_path / "reference" / "models" / cache_name / "model.safetensors").read_bytes()
    complete = 0
    for n in range(1, kills + 1):
        where = f"killed at event {n} ({events[n - 1]})"
        home = tmp_path / "snapshots" / str(n) / "home"
        folder = home / "models" / cache_name
        visible = [p.name for p in (home / "models").iterdir() if not p.name.startswith(".")]
        assert visible in ([], [cache_name]), where
        if is_complete_cache(folder):  # a complete cache holds the whole converted model
            complete += 1
            assert (folder / "model.safetensors").read_bytes() == reference_weights, where
        elif folder.exists():  # only the unusable copy that was there before, which is never loaded
            assert start == "stale" and json.loads((folder / MARKER).read_text())["format"] == 0, where
        assert torch.allclose(_cache_logits(home, gguf_file, monkeypatch), logits, atol=1e-5), where
        assert is_complete_cache(folder) and (folder / "model.safetensors").read_bytes() == reference_weights, where
    print(f"\nmodel cache ({start}): killed at each of its {kills} writes; never half there")
