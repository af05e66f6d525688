"""``townhall serve`` runs the captions worker as a child: started with a working token, started
again when it dies, stopped on shutdown. Stand-in programs play the worker here; the real one is
tested with the worker's own tests."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from support import make_config
from townhall.auth import tokens
from townhall.config import Config
from townhall.server import app as server_app
from townhall.server.captions_worker import WorkerProcess, local_url, worker_arguments

PYTHON = sys.executable


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_the_worker_is_given_the_server_the_models_and_the_languages_but_no_token() -> None:
    config = Config(asr_model="/srv/models/whisper-base", translation_models="/srv/models/mt",
                    speech_languages="en,ru,uk")
    assert worker_arguments(config, "http://127.0.0.1:8080") == [
        "captions", "--server", "http://127.0.0.1:8080",
        "--asr-model", "/srv/models/whisper-base", "--translation-models", "/srv/models/mt",
        "--speech-languages", "en,ru,uk",
    ]
    arguments = worker_arguments(Config(), "u")
    assert "--translation-models" not in arguments
    assert "--token" not in arguments
    assert local_url(Config(http_host="0.0.0.0"), 8080) == "http://127.0.0.1:8080"
    assert local_url(Config(http_host="::"), 8443) == "http://[::1]:8443"
    assert local_url(Config(http_host="10.1.2.3", tls_cert="c.pem"), 443) == "https://10.1.2.3:443"


async def test_a_worker_that_dies_is_started_again_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "townhall.server.captions_worker")
    commands = 0

    def command() -> list[str]:
        nonlocal commands
        commands += 1
        return [PYTHON, "-c", "import sys; sys.exit(3)"]

    worker = WorkerProcess(command, first_delay=0.05, max_delay=0.2)
    worker.start()
    try:
        await until(lambda: worker.starts >= 5)
    finally:
        await worker.stop()
    assert worker.exits[:3] == [3, 3, 3]
    assert commands == worker.starts, "every start asks for a fresh command (and token)"
    delays = [r.getMessage().rsplit("again in ", 1)[1] for r in caplog.records
              if "exited with 3" in r.getMessage()]
    assert delays[:4] == ["0.05 s", "0.1 s", "0.2 s", "0.2 s"]


async def test_a_worker_that_ran_long_enough_is_restarted_after_the_first_delay_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "townhall.server.captions_worker")
    now = [0.0]

    def clock() -> float:
        now[0] += 30.0  # every run looks 30 s long
        return now[0]

    worker = WorkerProcess(lambda: [PYTHON, "-c", "pass"], first_delay=0.05, max_delay=5.0,
                           stable_after=25.0, clock=clock)
    worker.start()
    try:
        await until(lambda: worker.starts >= 4)
    finally:
        await worker.stop()
    delays = {r.getMessage().rsplit("again in ", 1)[1] for r in caplog.records
              if "exited with 0" in r.getMessage()}
    assert delays == {"0.05 s"}, "the delay did not grow after runs longer than stable_after"


async def test_a_worker_that_cannot_be_started_is_tried_again_and_logged(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    worker = WorkerProcess(lambda: [str(tmp_path / "no-such-program")], first_delay=0.05)
    worker.start()
    try:
        await until(lambda: len(worker.exits) >= 2)
    finally:
        await worker.stop()
    assert worker.starts == 0
    assert any("cannot start the captions worker" in r.getMessage() for r in caplog.records)


async def test_stopping_ends_the_worker_and_kills_one_that_ignores_sigterm() -> None:
    polite = WorkerProcess(lambda: [PYTHON, "-c", "import time; time.sleep(60)"])
    polite.start()
    await until(lambda: polite.process is not None)
    assert polite.process is not None
    pid = polite.process.pid
    await polite.stop()
    assert polite.process.returncode == -signal.SIGTERM and gone(pid)
    await polite.stop()  # again: nothing happens

    stubborn = WorkerProcess(
        lambda: [PYTHON, "-c", "import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "print('ready', flush=True)\ntime.sleep(60)"],
        stop_timeout=0.5)
    stubborn.start()
    await until(lambda: stubborn.process is not None)
    await asyncio.sleep(0.5)  # let it ignore SIGTERM before being asked to stop
    await stubborn.stop()
    assert stubborn.process is not None and stubborn.process.returncode == -signal.SIGKILL
    assert stubborn.exits == [], "a stopped worker is not counted as dying"


STAND_IN = """
import asyncio, json, os, sys
import aiohttp

async def main(args):
    server, token = args[args.index('--server') + 1], os.environ['TOWNHALL_CAPTIONS_TOKEN']
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.replace('http', 'ws', 1) + '/ws/captions') as ws:
            await ws.send_json({'type': 'hello', 'token': token})
            message = await ws.receive_json(timeout=10)
            with open(sys.argv[1], 'w') as f:
                json.dump({'args': args, 'token': token, 'first': message}, f)
            await asyncio.sleep(60)

asyncio.run(main(sys.argv[2:]))
"""


async def test_serve_starts_a_worker_that_connects_with_its_token_and_stops_it(
    tmp_path: Path,
) -> None:
    script, report = tmp_path / "stand_in.py", tmp_path / "report.json"
    script.write_text(STAND_IN)
    config = make_config(tmp_path / "data").replace(captions_worker=True, asr_model="tiny.en")
    running = await server_app.start(config, worker_program=(PYTHON, str(script), str(report)))
    try:
        await until(report.exists, timeout=30)
        await asyncio.sleep(0.1)
        seen = json.loads(report.read_text())
        args = seen["args"]
        assert args[:3] == ["captions", "--server", f"http://127.0.0.1:{running.port}"]
        assert args[3:] == ["--asr-model", "tiny.en"], "the token is not on the command line"
        grant = tokens.verify(running.services.secret, seen["token"], time.time())
        assert (grant.room_id, grant.role) == ("*", "caption")
        assert seen["first"]["type"] == "rooms"
        assert running.worker is not None and running.worker.process is not None
        pid = running.worker.process.pid
    finally:
        await running.stop()
    assert gone(pid)


async def test_the_test_servers_start_no_worker(tmp_path: Path) -> None:
    running = await server_app.start(make_config(tmp_path / "data"))
    try:
        assert running.worker is None
    finally:
        await running.stop()
