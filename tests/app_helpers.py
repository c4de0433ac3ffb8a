"""Launch the real app (`python app.py`) on a free loopback port for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(home: Path, workspace: Path, log_path: Path, *, timeout_s: float = 120,
               env: dict[str, str] | None = None) -> Iterator[str]:
    """The app's URL once it serves, with ``home`` as TUNE_ARENA_HOME and ``workspace`` as its workspace (``env``:
    more environment, e.g. TUNE_ARENA_MULTI_USER=1); stopped afterwards. Fails the test with the end of the app's
    log if it exits or does not serve within ``timeout_s``."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "TUNE_ARENA_HOME": str(home),
           "TUNE_ARENA_WORKSPACE": str(workspace), **(env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"app did not serve {url} within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for_training(client, predicate, timeout: float) -> str:
    """Poll the live app's Train tab (``/train_status``) until its progress HTML satisfies ``predicate``; returns
    it, or fails with the last progress seen."""
    deadline = time.time() + timeout
    progress = ""
    while time.time() < deadline:
        shown = client.predict(api_name="/train_status")[0]
        progress = shown if isinstance(shown, str) and shown else progress  # an unchanged job answers a skip
        if predicate(progress):
            return progress
        time.sleep(1)
    raise AssertionError(f"timed out; last progress: {progress}")
