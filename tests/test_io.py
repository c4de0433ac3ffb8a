"""core.io: the one module every write of the project goes through (files and folders, atomically)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import core.io
from core.io import atomic_folder, read_jsonl, recover_folder, remove_folder, replace_folder, write_atomic, write_json


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "result.json"
    write_json(path, {"a": 1})
    write_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(path, {"step": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_text().strip().endswith("}") and '"step": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_atomic_folder_swaps_in_a_new_version(tmp_path):
    final = tmp_path / "index"
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("v1")
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("v2")
    assert (final / "a").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_atomic_folder_keeps_the_old_version_when_the_block_fails(tmp_path):
    final = tmp_path / "index"
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("v1")
    with pytest.raises(RuntimeError, match="embedding failed"), atomic_folder(final) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("embedding failed")
    assert (final / "a").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_atomic_folder_keeps_a_winner_unless_told_to_replace_it(tmp_path):
    final = tmp_path / "cache"
    with atomic_folder(final) as tmp:
        (tmp / "marker").write_text("old format")
    with atomic_folder(final, replace=False) as tmp:
        (tmp / "marker").write_text("mine")
    assert (final / "marker").read_text() == "old format"
    with atomic_folder(final, replace=lambda folder: (folder / "marker").read_text() == "old format") as tmp:
        (tmp / "marker").write_text("new format")
    assert (final / "marker").read_text() == "new format"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


@pytest.mark.skipif(not core.io.CAN_EXCHANGE, reason="renameat2's exchange is Linux only")
def test_replacing_a_folder_never_leaves_a_moment_without_it(tmp_path):
    """A reader polling the folder while it is replaced 300 times always finds it, whole (renameat2 exchange)."""
    final = tmp_path / "kb"
    final.mkdir()
    (final / "manifest.json").write_text("0")
    missing: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                (final / "manifest.json").read_text()
            except FileNotFoundError:
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 301):
            new = tmp_path / f".tmp-kb-{version}"
            new.mkdir()
            (new / "manifest.json").write_text(str(version))
            replace_folder(new, final)
    finally:
        done.set()
        thread.join()
    assert missing == [] and (final / "manifest.json").read_text() == "300"
    assert [p.name for p in tmp_path.iterdir()] == ["kb"]


def test_without_exchange_a_kill_between_the_renames_is_recovered(tmp_path, monkeypatch):
    """Where the kernel cannot exchange, the old folder waits as .old-<name>-<hex>; recover_folder puts it back."""
    final = tmp_path / "kb"
    final.mkdir()
    (final / "manifest.json").write_text("old")
    monkeypatch.setattr(core.io, "exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(source, target):
        calls.append(Path(target).name)
        if len(calls) == 2:  # the old folder has moved aside, then the process dies
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    new = tmp_path / ".tmp-kb-new"
    new.mkdir()
    with pytest.raises(KeyboardInterrupt):
        replace_folder(new, final)
    monkeypatch.undo()
    assert calls[0].startswith(".old-kb-")
    recover_folder(final)
    assert (final / "manifest.json").read_text() == "old"


def test_remove_folder_hides_first_and_sweeps_earlier_leftovers(tmp_path):
    runs = tmp_path / "runs"
    for name in ("r1", "r2"):
        (runs / name / "adapter").mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
    leftover = runs / ".tmp-r0-deleting-abc123" / "r0"  # a delete that a kill cut short
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    remove_folder(runs / "r1")
    assert sorted(p.name for p in runs.iterdir()) == ["r2"]


def test_a_workspace_counts_its_own_bytes_and_not_what_a_link_points_at(tmp_path):
    from core.engine.workspace import Workspace

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 5000)
    workspace = Workspace.open(tmp_path / "ws")
    (workspace.runs / "r1").mkdir()
    (workspace.runs / "r1" / "weights.bin").write_bytes(b"y" * 300)
    (workspace.uploads / "note.txt").write_bytes(b"z" * 20)
    (workspace.uploads / "link.bin").symlink_to(outside)
    assert workspace.bytes_of() == 320
    assert workspace.bytes_of(workspace.runs / "r1") == 300
