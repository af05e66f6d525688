"""The captions worker as a child process of ``townhall serve``: started, restarted, stopped.

``townhall serve`` runs ``python -m townhall captions --server URL --asr-model ...`` (unless
``captions_worker`` is off). The worker token goes in the ``TOWNHALL_CAPTIONS_TOKEN`` environment
variable, so other local users cannot read it from the process list; each start gets a fresh one.
If the worker exits, it is started again after a delay that doubles from :data:`FIRST_DELAY` up
to :data:`MAX_DELAY` seconds, back to the first delay once a run lasted :data:`STABLE_AFTER`
seconds. On shutdown the worker gets SIGTERM, and SIGKILL if it has not exited
:data:`STOP_TIMEOUT` seconds later; on Linux it also gets SIGTERM if the server dies without
stopping it. The token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from townhall.config import Config

logger = logging.getLogger(__name__)

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
STABLE_AFTER = 60.0
STOP_TIMEOUT = 5.0
#: What runs the worker: this Python with the townhall package.
PROGRAM: tuple[str, ...] = (sys.executable, "-m", "townhall")

_PR_SET_PDEATHSIG = 1


def local_url(config: Config, port: int) -> str:
    """The address the worker on this machine reaches the server at."""
    host = config.http_host
    if host in ("", "0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.tls_cert else "http"
    return f"{scheme}://{host}:{port}"


#: The environment variable that carries the worker token to the child.
TOKEN_VARIABLE = "TOWNHALL_CAPTIONS_TOKEN"


def worker_arguments(config: Config, server_url: str) -> list[str]:
    """The ``townhall captions`` arguments for a worker of this server (the token goes apart)."""
    arguments = ["captions", "--server", server_url, "--asr-model", config.asr_model]
    if config.translation_models:
        arguments += ["--translation-models", config.translation_models]
    if config.speech_languages:
        arguments += ["--speech-languages", config.speech_languages]
    return arguments


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send SIGTERM to the child when the server dies."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl  # resolved here, not after fork

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class WorkerProcess:
    """Keeps one child process running until :meth:`stop`."""

    def __init__(
        self,
        command: Callable[[], Sequence[str]],
        *,
        environment: Callable[[], Mapping[str, str]] | None = None,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
        stop_timeout: float = STOP_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: called before every start: the argv (with a fresh token)
        self._command = command
        #: called before every start: variables added to the child's environment
        self._environment = environment
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._clock = clock
        self.process: asyncio.subprocess.Process | None = None
        #: how many times a process was started, and the exit codes seen
        self.starts = 0
        self.exits: list[int | None] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        delay = self._first_delay
        while True:
            started = self._clock()
            code = await self._run_once()
            ran = self._clock() - started
            if ran >= self._stable_after:
                delay = self._first_delay
            self.exits.append(code)
            logger.warning("captions worker exited with %s after %.1f s; starting it again in "
                           "%g s", code, ran, delay)
            await asyncio.sleep(delay)
            delay = min(self._max_delay, delay * 2)

    async def _run_once(self) -> int | None:
        argv = list(self._command())
        env = None
        if self._environment is not None:
            env = {**os.environ, **self._environment()}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent())
        except OSError as exc:
            logger.error("cannot start the captions worker (%s): %s", argv[0], exc)
            return None
        self.starts += 1
        logger.info("captions worker started (pid %d)", self.process.pid)
        return await self.process.wait()

    async def stop(self) -> None:
        """Stop supervising and end the process; calling it again does nothing."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self._stop_timeout)
        except TimeoutError:
            logger.warning("captions worker did not stop in %.0f s; killing it",
                           self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        logger.info("captions worker stopped")
