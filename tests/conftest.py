"""Shared fixtures: a real townhall server on 127.0.0.1 with a fresh data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support import RunningServer, make_config
from townhall.server import app as server_app


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await server_app.start(make_config(tmp_path / "data"))
    running.services.config = running.services.config.replace(http_port=running.port)
    try:
        yield RunningServer(running)
    finally:
        await running.stop()
