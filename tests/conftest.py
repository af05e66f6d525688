"""Shared fixtures: a real townhall server on 127.0.0.1 with a fresh data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support import RunningServer, make_config, serving


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serving(make_config(tmp_path / "data")) as running:
        yield running
