"""A real `python app.py` served on a free loopback port, shared by every UI test of the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import served_app


@pytest.fixture(scope="session")
def live_workspace(tmp_path_factory) -> Path:
    """The workspace folder of the live app (runs/, indexes/, evals/, uploads/ appear there)."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def live_app(bundled_home, live_workspace, tmp_path_factory):
    """Start the app as a user would; yield its URL; stop it. Its log is printed if it fails to start."""
    with served_app(bundled_home, live_workspace, tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url
