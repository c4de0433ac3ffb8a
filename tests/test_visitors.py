"""A shared instance (core.engine.visitors): visitors' workspaces kept apart, the shared demo items read-only, quotas
with one-line refusals, one training queue for all, and the sweep of stale anonymous workspaces."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from retrieval_helpers import FakeEmbedder
from test_jobs import Scripted
from training_helpers import ROWS, tiny_config, write_rows
from verdict_helpers import install_eval

from core.arena import ArenaConfig
from core.data.demo import demo_path
from core.engine import Engine
from core.engine.visitors import SEEN_FILE, Visitor, VisitorSettings
from core.errors import ConfigError, JobBusyError, NameRuleError, QuotaError, RunStateError
from core.io import folder_bytes

ALICE, BOB = Visitor.anonymous("alice-browser-secret"), Visitor.anonymous("bob-browser-secret")


@pytest.fixture
def instance(tmp_path, monkeypatch) -> Engine:
    """A shared instance (no models load: the embedder is a fake) with the demo run and evaluation installed."""
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: FakeEmbedder())
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, uploads_per_hour=3))
    engine.install_demo_run()
    install_eval(engine.workspace.root, "demo-eval")
    return engine


def document(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def fake_run(runs: Path, name: str) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"method": "lora"}')
    (folder / "status.json").write_text('{"state": "completed"}')
    return folder


def test_settings_come_from_the_environment():
    assert not VisitorSettings.from_env({}).enabled  # a local `python app.py`: one workspace, as before
    assert VisitorSettings.from_env({"SPACE_ID": "team/tune-arena"}).enabled
    assert not VisitorSettings.from_env({"SPACE_ID": "team/tune-arena", "TUNE_ARENA_MULTI_USER": "0"}).enabled
    settings = VisitorSettings.from_env({"TUNE_ARENA_MULTI_USER": "1", "TUNE_ARENA_VISITOR_DISK_MB": "50",
                                         "TUNE_ARENA_UPLOADS_PER_HOUR": "4", "TUNE_ARENA_VISITOR_TTL_HOURS": "0.5",
                                         "TUNE_ARENA_PERSISTENT_DIR": "/srv/keep"})
    assert (settings.enabled, settings.disk_bytes, settings.uploads_per_hour, settings.ttl_hours,
            settings.persistent) == (True, 50 * 10**6, 4, 0.5, Path("/srv/keep"))
    with pytest.raises(ConfigError, match="TUNE_ARENA_UPLOADS_PER_HOUR: must be a positive integer, got 'many'"):
        VisitorSettings.from_env({"TUNE_ARENA_UPLOADS_PER_HOUR": "many"})
    with pytest.raises(ConfigError, match="TUNE_ARENA_MULTI_USER: must be 0 or 1"):
        VisitorSettings.from_env({"TUNE_ARENA_MULTI_USER": "yes"})


def test_a_visitor_is_a_signed_in_name_or_a_digest_of_their_secret():
    signed = Visitor.signed_in_as("ada-l")
    assert (signed.key, signed.signed_in, signed.name) == ("hf-ada-l", True, "@ada-l")
    assert Visitor.signed_in_as("../../etc").key == "hf-etc"  # never a path
    anonymous = Visitor.anonymous("alice-browser-secret")
    assert anonymous.key.startswith("anon-") and "alice" not in anonymous.key and not anonymous.signed_in
    assert Visitor.anonymous("alice-browser-secret") == anonymous != Visitor.anonymous("bob-browser-secret")
    with pytest.raises(ConfigError, match="no browser session"):
        Visitor.anonymous("")


def test_one_visitor_never_sees_or_reaches_anothers_work(instance, tmp_path):
    alice, bob = instance.visitors.engine(ALICE), instance.visitors.engine(BOB)
    assert alice.workspace.root.parent == bob.workspace.root.parent == instance.workspace.root / "visitors"
    stored = alice.store_upload(document(tmp_path / "in", "secret.md", "# Plans\nThe zorblax launch is in May."),
                                "documents")
    alice.build_index([stored], "alice-notes")
    own_run = fake_run(alice.workspace.runs, "alice-run")
    own_eval = install_eval(alice.workspace.root, "alice-eval")

    assert [row["name"] for row in alice.list_indexes()] == ["alice-notes"]  # the demo index is not built yet
    assert {row["name"] for row in alice.list_evals()} == {"alice-eval", "demo-eval"}
    assert {row["run_id"] for row in alice.list_runs()} == {"alice-run", "demo-quick-lora"}
    assert alice.search("alice-notes", "zorblax", 1)[0].chunk.text.startswith("# Plans")

    # bob lists only the shared items, and every way of naming alice's is refused
    assert bob.list_indexes() == [] and [row["name"] for row in bob.list_evals()] == ["demo-eval"]
    assert [row["run_id"] for row in bob.list_runs()] == ["demo-quick-lora"]
    for ref in ("alice-notes", str(alice.workspace.indexes / "alice-notes"),
                str(bob.workspace.indexes / ".." / ".." / alice.workspace.root.name / "indexes" / "alice-notes")):
        with pytest.raises((NameRuleError, ValueError)):
            bob.search(ref, "zorblax", 1)
    for ref in ("alice-run", str(own_run), str(bob.workspace.runs / ".." / ".." / alice.workspace.root.name / "runs"
                                              / "alice-run")):
        with pytest.raises((NameRuleError, RunStateError)):
            bob.find_run(ref)
        with pytest.raises((NameRuleError, RunStateError)):
            bob.resolve_run(ref)
    with pytest.raises(ConfigError, match="outside the folders this app may read"):
        bob.check_sources([stored])  # alice's upload, to index or evaluate as bob
    with pytest.raises(NameRuleError):
        bob.eval_dir(str(own_eval))
    with pytest.raises(RunStateError):
        bob.delete_run("alice-run")
    assert own_run.is_dir()


def test_the_demo_items_are_shared_and_read_only(instance, tmp_path):
    bob = instance.visitors.engine(BOB)
    demo_run = instance.workspace.root / "runs" / "demo-quick-lora"
    assert bob.find_run("demo-quick-lora").path == demo_run == bob.runs.get(str(demo_run)).path
    assert bob.resolve_index("demo") == instance.workspace.root / "indexes" / "demo" == bob.index_dir("demo")
    with pytest.raises(RunStateError, match="shared by every visitor"):
        bob.delete_run("demo-quick-lora")
    with pytest.raises(RunStateError, match="shared by every visitor"):
        bob.runs.delete(str(demo_run))
    stored = bob.store_upload(document(tmp_path / "in", "mine.md", "# Mine\nText."), "documents")
    with pytest.raises(ConfigError, match="demo corpus every visitor shares"):
        bob.build_index([stored], "demo")
    assert bob.ensure_demo_index() == instance.workspace.root / "indexes" / "demo"  # built once, for everyone
    assert [row["name"] for row in bob.list_indexes()] == ["demo"]
    assert demo_run.is_dir() and not (bob.workspace.runs / "demo-quick-lora").exists()


def test_disk_and_upload_quotas_refuse_with_one_line(tmp_path):
    engine = Engine(tmp_path / "ws", confined=True,
                    visitors=VisitorSettings(enabled=True, disk_mb=0.01, uploads_per_hour=2))
    alice = engine.visitors.engine(ALICE)
    small = document(tmp_path / "in", "a.md", "# A\n" + "word " * 200)
    alice.store_upload(small, "documents")
    alice.store_upload(document(tmp_path / "in", "b.md", "# B\nshort"), "documents")
    with pytest.raises(QuotaError, match=r"^uploads: 2 files an hour is this app's limit per visitor; try again in "
                                         r"\d+ min$"):
        alice.store_upload(document(tmp_path / "in", "c.md", "# C\nshort"), "documents")
    big = document(tmp_path / "in", "big.md", "# Big\n" + "word " * 3000)  # 15 KB: over the 10 KB quota
    bob = engine.visitors.engine(BOB)
    with pytest.raises(QuotaError, match=r"^disk quota: your workspace holds .* of its 10 KB; delete runs"):
        bob.store_upload(big, "documents")
    assert not (bob.workspace.uploads / "documents" / "big.md").exists()
    assert folder_bytes(bob.workspace.root) < 100  # nothing of it was written


def test_steps_per_job_are_capped_on_a_cpu_instance(tmp_path, tiny_model_dir):
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, cpu_max_steps=5))
    alice = engine.visitors.engine(ALICE)
    data = str(alice.store_upload(write_rows(tmp_path / "train.jsonl", ROWS * 4), "datasets"))  # 32 rows
    with pytest.raises(QuotaError, match=r"^max_steps: 50 is over the 5 steps a training job may take on this CPU "
                                         "instance; lower Max steps$"):
        alice.jobs.start(tiny_config(data, tiny_model_dir, max_steps=50))
    by_epochs = tiny_config(data, tiny_model_dir, max_steps=None, epochs=2)
    with pytest.raises(QuotaError, match=r"^epochs: this run would take (\d+) optimizer steps, over the 5 a "
                                         "training job may take") as refused:
        alice.train(by_epochs)
    assert int(re.search(r"take (\d+)", str(refused.value)).group(1)) > 5
    assert list(alice.workspace.runs.iterdir()) == []  # refused before any run folder exists
    done = alice.train(tiny_config(data, tiny_model_dir, max_steps=2))
    assert done.state == "completed" and Path(done.run_dir).parent == alice.workspace.runs
    with pytest.raises(ConfigError, match="^data: .* is outside the folders this app may read"):
        alice.train(tiny_config(write_rows(tmp_path / "elsewhere.jsonl", ROWS), tiny_model_dir, max_steps=2))


def test_a_merge_that_would_pass_the_disk_quota_is_refused(tmp_path):
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, disk_mb=1))
    alice = engine.visitors.engine(ALICE)
    run = fake_run(alice.workspace.runs, "big-run")
    (run / "result.json").write_text('{"total_params": 1000000}')  # 4 MB merged, over the 1 MB quota
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")  # only its presence is read before the quota
    with pytest.raises(QuotaError, match=r"^disk quota: your workspace holds .* \(\+4.0 MB for the merged model\) "
                                         r"of its 1.0 MB"):
        alice.merge_run("big-run")
    assert not (alice.workspace.exports / "big-run-merged").exists()


def test_training_jobs_queue_across_visitors(instance, tmp_path):
    fake = Scripted()
    alice, bob = instance.visitors.engine(ALICE), instance.visitors.engine(BOB)
    for view in (alice, bob):  # a fake trainer behind each visitor's handle on the one queue
        view.jobs._train = fake
    config = tiny_config("data.jsonl", "base")
    first = alice.jobs.start(config)
    assert first.state in ("preparing", "running") and first.run_dir.startswith(str(alice.workspace.runs))
    assert fake.reported.wait(5)
    queued = bob.jobs.start(config)
    assert (queued.state, queued.ahead, queued.active) == ("queued", 1, True)
    assert queued.run_dir.startswith(str(bob.workspace.runs))
    with pytest.raises(JobBusyError, match="still queued"):
        bob.jobs.start(config)  # one job per visitor
    assert bob.jobs.stop() is True and bob.jobs.snapshot().state == "cancelled"  # out of the queue, never trained
    assert bob.jobs.start(config).state == "queued"
    assert alice.jobs.snapshot().state == "running"  # each visitor sees their own job
    fake.release.set()
    assert alice.jobs.wait(5).state == "completed"
    assert bob.jobs.wait(5).state == "completed" and len(fake.calls) == 2
    assert fake.calls[1]["run_dir"].parent == bob.workspace.runs


def test_the_queue_has_a_limit(tmp_path):
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, queue=1))
    fake = Scripted()
    views = [engine.visitors.engine(Visitor.anonymous(f"visitor-secret-{n}")) for n in range(3)]
    for view in views:
        view.jobs._train = fake
    views[0].jobs.start(tiny_config("d.jsonl", "base"))
    views[1].jobs.start(tiny_config("d.jsonl", "base"))
    with pytest.raises(JobBusyError, match="2 jobs are queued or running on this app"):
        views[2].jobs.start(tiny_config("d.jsonl", "base"))
    fake.release.set()
    views[1].jobs.wait(5)


def test_the_sweep_removes_stale_anonymous_workspaces_only(instance, caplog):
    stale = instance.visitors.engine(ALICE).workspace.root
    fresh = instance.visitors.engine(BOB).workspace.root
    signed = instance.visitors.engine(Visitor.signed_in_as("ada")).workspace.root
    busy_visitor = Visitor.anonymous("busy-browser-secret")
    busy = instance.visitors.engine(busy_visitor)
    fake = Scripted()
    busy.jobs._train = fake
    busy.jobs.start(tiny_config("d.jsonl", "base"))
    demo_index = instance.ensure_demo_index()  # the shared index, built (by a visitor's request) long ago
    day_ago = time.time() - 25 * 3600
    for folder in (stale, signed, busy.workspace.root):
        os.utime(folder / SEEN_FILE, (day_ago, day_ago))
        os.utime(folder, (day_ago, day_ago))
    os.utime(demo_index, (day_ago, day_ago))
    with caplog.at_level(logging.INFO, logger="core.engine.visitors"):
        removed = instance.visitors.sweep()
    assert removed == [stale] and not stale.exists()
    assert fresh.is_dir() and signed.is_dir() and busy.workspace.root.is_dir()
    assert (instance.workspace.root / "runs" / "demo-quick-lora").is_dir()
    assert (instance.workspace.root / "evals" / "demo-eval" / "results.json").is_file()
    assert (demo_index / "manifest.json").is_file() and instance.search("demo", "error code", 1)
    assert any("swept" in record.message and stale.name in record.message for record in caplog.records)
    fake.release.set()
    busy.jobs.wait(5)
    again = instance.visitors.engine(ALICE)  # a swept visitor who comes back starts afresh
    assert again.workspace.root == stale and stale.is_dir()
    assert [row["name"] for row in again.list_indexes()] == ["demo"]  # only the shared items are left
    assert [row["run_id"] for row in again.list_runs()] == ["demo-quick-lora"]


def test_signed_in_workspaces_live_in_persistent_storage(tmp_path):
    keep = tmp_path / "data" / "tune-arena"
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, persistent=keep))
    assert engine.visitors.engine(Visitor.signed_in_as("ada")).workspace.root == keep / "visitors" / "hf-ada"
    assert engine.visitors.engine(ALICE).workspace.root.parent == tmp_path / "ws" / "visitors"


def test_persistent_storage_is_picked_on_a_space_with_a_writable_data_mount(tmp_path):
    assert inspect.signature(VisitorSettings.from_env).parameters["data"].default == Path("/data")
    mount, space = tmp_path / "data", {"SPACE_ID": "team/tune-arena"}
    assert VisitorSettings.from_env(space, data=mount).persistent is None  # no persistent storage on this Space
    mount.mkdir()
    assert VisitorSettings.from_env(space, data=mount).persistent == mount / "tune-arena"
    assert VisitorSettings.from_env({"TUNE_ARENA_MULTI_USER": "1"}, data=mount).persistent is None  # not a Space
    elsewhere = {**space, "TUNE_ARENA_PERSISTENT_DIR": str(tmp_path / "keep")}
    assert VisitorSettings.from_env(elsewhere, data=mount).persistent == tmp_path / "keep"
    if os.geteuid() != 0:  # root may write to a read-only folder: the check only means something for a user
        mount.chmod(0o555)
        try:
            assert VisitorSettings.from_env(space, data=mount).persistent is None
        finally:
            mount.chmod(0o755)
    assert list(mount.iterdir()) == []  # reading the settings writes nothing


def test_a_signed_in_visitors_work_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: FakeEmbedder())
    settings = VisitorSettings(enabled=True, persistent=tmp_path / "data" / "tune-arena")
    ada_visitor = Visitor.signed_in_as("ada")
    before = Engine(tmp_path / "ws", confined=True, visitors=settings)
    ada = before.visitors.engine(ada_visitor)
    stored = ada.store_upload(document(tmp_path / "in", "ada.md", "# Ada\nThe zorblax launch is in May."),
                              "documents")
    ada.build_index([stored], "ada-notes")
    fake_run(ada.workspace.runs, "ada-run")
    install_eval(ada.workspace.root, "ada-eval")
    fake_run(before.visitors.engine(ALICE).workspace.runs, "alice-run")  # anonymous: in the ephemeral workspace

    shutil.rmtree(tmp_path / "ws")  # a Space restart: the ephemeral disk starts empty, /data is kept
    after = Engine(tmp_path / "ws", confined=True, visitors=settings)
    after.install_demo_run()
    ada = after.visitors.engine(ada_visitor)
    assert {row["run_id"] for row in ada.list_runs()} == {"ada-run", "demo-quick-lora"}
    assert ada.find_run("ada-run").path == settings.persistent / "visitors" / "hf-ada" / "runs" / "ada-run"
    assert [row["name"] for row in ada.list_indexes()] == ["ada-notes"]
    assert ada.search("ada-notes", "zorblax", 1)[0].chunk.text.startswith("# Ada")
    assert [row["name"] for row in ada.list_evals()] == ["ada-eval"] and stored.is_file()
    alice = after.visitors.engine(ALICE)
    assert [row["run_id"] for row in alice.list_runs()] == ["demo-quick-lora"]  # anonymous work went with the disk
    removed = after.visitors.sweep(now=time.time() + 1000 * 3600)  # long after: every anonymous workspace is stale
    assert removed == [alice.workspace.root] and ada.workspace.root.is_dir()


def test_the_disk_quota_refuses_an_index_build_and_an_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: FakeEmbedder())
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, disk_mb=0.01))
    alice = engine.visitors.engine(ALICE)
    stored = alice.store_upload(document(tmp_path / "in", "notes.md", "# Notes\nThe zorblax launch is in May."),
                                "documents")
    run = fake_run(alice.workspace.runs, "big-run")
    (run / "adapter_model.safetensors").write_bytes(b"\0" * 12_000)  # a trained run fills the 10 KB quota
    full = r"^disk quota: your workspace holds 12 KB of its 10 KB; delete runs in the Runs tab"
    with pytest.raises(QuotaError, match=full):
        alice.build_index([stored], "notes")
    assert not (alice.workspace.indexes / "notes").exists()
    with pytest.raises(QuotaError, match=full):
        alice.evaluate(demo_path("test.jsonl"), ArenaConfig(variants=["zero_shot"]), limit=1)
    assert list(alice.workspace.evals.iterdir()) == [] and engine.models.loaded() == []  # refused before a model
    alice.delete_run("big-run")  # room made: the same build goes through
    assert alice.build_index([stored], "notes") and (alice.workspace.indexes / "notes" / "manifest.json").is_file()


def test_a_sweeper_thread_stops_when_asked(instance):
    stop = threading.Event()
    thread = instance.visitors.start_sweeper(stop)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_one_visitors_benchmarks_are_neither_listed_nor_opened_nor_run_for_another(instance):
    alice, bob = instance.visitors.engine(ALICE), instance.visitors.engine(BOB)
    fake_run(alice.workspace.runs, "alice-run")
    saved = {"id": "tune_arena_probe-alice", "model": "SmolLM2-135M-Instruct", "tasks": {"tune_arena_probe": {}},
             "models": {"base": {}}, "config": {"limit": 5}}
    (alice.benchmarks_dir / "tune_arena_probe-alice.json").write_text(json.dumps(saved))

    assert "tune_arena_probe-alice" in [row["id"] for row in alice.list_benchmarks()]
    assert alice.load_benchmark("tune_arena_probe-alice")["config"] == {"limit": 5}
    assert "tune_arena_probe-alice" not in [row["id"] for row in bob.list_benchmarks()]
    with pytest.raises(ConfigError, match="no saved benchmark"):
        bob.load_benchmark("tune_arena_probe-alice")
    for ref in ("tune_arena_probe-alice", f"../../{alice.workspace.root.name}/benchmarks/tune_arena_probe-alice"):
        with pytest.raises(ConfigError):
            bob.load_benchmark(ref)
    with pytest.raises((NameRuleError, RunStateError)):  # refused before any model loads
        bob.benchmark(["tune_arena_probe"], adapters=["alice-run"], limit=1)
    assert list(bob.benchmarks_dir.iterdir()) == []


def test_a_run_that_would_write_past_the_disk_quota_ends_before_it_writes(tmp_path, tiny_model_dir):
    from core.training.loop import disk_estimate

    probe = Engine(tmp_path / "probe", confined=False).train(
        tiny_config(write_rows(tmp_path / "probe.jsonl", ROWS), tiny_model_dir, method="full", max_steps=1))
    full_bytes = disk_estimate(probe.trainable_params, 2)
    engine = Engine(tmp_path / "ws", confined=True,
                    visitors=VisitorSettings(enabled=True, disk_mb=full_bytes / 2 / 10**6))
    alice = engine.visitors.engine(ALICE)
    data = str(alice.store_upload(write_rows(tmp_path / "train.jsonl", ROWS), "datasets"))
    with pytest.raises(QuotaError, match=r"^disk quota: your workspace holds .* \(\+.* for this run's checkpoints "
                                         r"and weights\) of its "):
        alice.train(tiny_config(data, tiny_model_dir, method="full", max_steps=2))
    (failed,) = alice.workspace.runs.iterdir()  # the run is there, failed with that line, and holds no weights
    assert "disk quota" in json.loads((failed / "status.json").read_text())["error"]
    assert not list(failed.rglob("*.safetensors"))
    done = alice.train(tiny_config(data, tiny_model_dir, max_steps=2))  # LoRA: far less to write
    assert done.state == "completed"
