"""Shared fixtures: a real townhall server on 127.0.0.1 with a fresh data directory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from townhall.auth import tokens
from townhall.config import Config
from townhall.server import app as server_app
from townhall.server.api import invite_url


def make_config(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        http_host="127.0.0.1",
        http_port=0,
        media_addresses=("127.0.0.1",),
        media_udp_port=0,
        media_tcp_port=0,
        reconnect_grace=3.0,
    )


@dataclass
class RunningServer:
    running: server_app.Running

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/ws"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/?admin={self.admin_token}"

    @property
    def admin_token(self) -> str:
        return self.token("*", "admin")

    def token(self, room_id: str, role: str, ttl: int = 3600) -> str:
        return tokens.sign(self.running.services.secret, room_id, role, ttl, time.time())

    async def create_room(self, name: str) -> str:
        record = await self.running.services.store.create_room(name)
        return record.id

    async def invite(self, room_id: str, role: str) -> str:
        return invite_url(self.base_url, room_id, self.token(room_id, role))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await server_app.start(make_config(tmp_path / "data"))
    running.services.config = running.services.config.replace(http_port=running.port)
    try:
        yield RunningServer(running)
    finally:
        await running.stop()
