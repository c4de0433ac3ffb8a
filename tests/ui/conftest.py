"""A real `python app.py` served on a free loopback port, shared by every UI test of the session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def live_workspace(tmp_path_factory) -> Path:
    """The workspace folder of the live app (runs/, indexes/, evals/, uploads/ appear there)."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def live_app(bundled_home, live_workspace, tmp_path_factory):
    """Start the app as a user would; yield its URL; stop it. Its log is printed if it fails to start."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "TUNE_ARENA_HOME": str(bundled_home),
           "TUNE_ARENA_WORKSPACE": str(live_workspace)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"app did not serve {url} within 120 s:\n{log_path.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
