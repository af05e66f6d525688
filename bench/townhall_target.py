"""townhall as a benchmark target: ``townhall serve`` plus the page protocol (docs/protocol.md).

The server runs as one process on a fresh data directory, configured through the environment
(``TOWNHALL_DATA_DIR``, ``TOWNHALL_HTTP_PORT``, ``TOWNHALL_MEDIA_UDP_PORT``,
``TOWNHALL_MEDIA_TCP_PORT``, ``TOWNHALL_MEDIA_ADDRESSES=127.0.0.1``). The room and the invite tokens
come from the CLI (``townhall room create NAME``, ``townhall invite ROOM --role ROLE``), which opens
the same data directory. Participants speak the page protocol over ``/ws``:

    producer:  join (speaker token) -> joined; publish {sdp, tracks} -> publish-answer
    consumer:  join (listener token) -> joined; <- subscribe-offer; subscribe-answer ->

Every ``subscribe-offer`` is answered, also on renegotiation and also for the producer's own
participant (its offers are answered by a throwaway consumer that is not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from participants import SyntheticConsumer, SyntheticProducer

logger = logging.getLogger(__name__)

# The Python process itself (not a launcher script) is the one whose CPU time is measured.
_ENTRY = "import sys; from townhall.cli import main; sys.exit(main())"
DEFAULT_COMMAND = f"{shlex.quote(sys.executable)} -c {shlex.quote(_ENTRY)}"


class TownhallError(RuntimeError):
    """townhall refused a request, closed the socket, or its CLI failed."""


class _Signalling:
    """One participant's WebSocket session."""

    def __init__(self, http: aiohttp.ClientSession, url: str, name: str) -> None:
        self.http = http
        self.url = url
        self.name = name
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.consumer: SyntheticConsumer | None = None
        #: The participant's own producer, told ``send-layers``.
        self.producer: SyntheticProducer | None = None
        self.answered = asyncio.Event()  # set after the first subscribe-answer is sent
        #: The server's number for the receiving connection, and how often it offered a new one.
        self.connection: int | None = None
        self.restarts = 0
        #: Tell the server each video is shown at this size (the page's ``layout``), or not.
        self.tile: tuple[int, int] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def join(self, token: str, timeout: float = 10.0) -> dict[str, Any]:
        self.ws = await self.http.ws_connect(self.url, heartbeat=None, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return await self.request({"type": "join", "token": token, "name": self.name}, "joined")

    async def request(
        self, message: dict[str, Any], reply: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        assert self.ws is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = future
        try:
            await self.ws.send_str(json.dumps(message))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(reply, None)

    def _fail_waiting(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            kind = message.get("type")
            if kind == "subscribe-offer":
                await self._answer(message)
            elif kind == "send-layers" and self.producer is not None:
                self.producer.send_layers(int(message["layers"]))
            elif kind == "error":
                logger.warning("%s: townhall error %s", self.name, message)
                self._fail_waiting(TownhallError(f"{message.get('code')}: {message}"))
            future = self._waiting.get(kind)
            if future is not None and not future.done():
                future.set_result(message)
        self._fail_waiting(
            TownhallError(f"{self.name}: socket closed with code {self.ws.close_code}")
        )

    async def _answer(self, offer: dict[str, Any]) -> None:
        assert self.ws is not None
        if self.consumer is None:
            self.consumer = SyntheticConsumer()  # the producer's own: not counted
        connection = offer.get("connection")
        try:
            if self.connection is not None and connection != self.connection:
                logger.warning("%s: the server offers a new receiving connection (%s)",
                               self.name, connection)
                self.restarts += 1
                await self.consumer.restart()
            self.connection = connection
            answer = await self.consumer.answer(offer["sdp"])
        except Exception:
            logger.exception("%s: could not answer a subscribe-offer", self.name)
            return
        await self.ws.send_str(json.dumps({"type": "subscribe-answer", "sdp": answer,
                                           "connection": connection}))
        if self.tile is not None:
            width, height = self.tile
            sizes = {c["mid"]: {"width": width, "height": height}
                     for c in offer.get("consumers", []) if c.get("kind") == "video"}
            await self.ws.send_str(json.dumps({"type": "layout", "consumers": sizes}))
        self.answered.set()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.send_str(json.dumps({"type": "leave"}))
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None


class TownhallTarget:
    """``townhall serve`` with ``rooms`` rooms (one unless asked), each with one producer
    (speaker) and N consumers (listeners)."""

    def __init__(
        self,
        name: str = "townhall",
        command: str = DEFAULT_COMMAND,
        http_port: int = 18080,
        media_udp_port: int = 10000,
        media_tcp_port: int = 10001,
        log_file: Path | None = None,
        source: Path | None = None,
        measure_delay: bool = False,
        tile: tuple[int, int] | None = None,
        rooms: int = 1,
    ) -> None:
        self.name = name
        self.rooms = rooms
        self.measure_delay = measure_delay
        self.tile = tile
        self.command = shlex.split(command)
        #: Another tree's ``src`` to run instead of the installed townhall (A/B comparisons).
        self.source = source
        self.http_port = http_port
        self.media_udp_port = media_udp_port
        self.media_tcp_port = media_tcp_port
        self.log_file = log_file
        self._data_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._sessions: list[_Signalling] = []
        self._names = itertools.count(1)
        #: invite tokens by (room index, role)
        self._tokens: dict[tuple[int, str], str] = {}

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("townhall is not running")
        return self._process.pid

    def _env(self) -> dict[str, str]:
        assert self._data_dir is not None
        extra = {} if self.source is None else {"PYTHONPATH": str(self.source)}
        return dict(
            os.environ,
            **extra,
            TOWNHALL_DATA_DIR=str(self._data_dir),
            TOWNHALL_HTTP_HOST="127.0.0.1",
            TOWNHALL_HTTP_PORT=str(self.http_port),
            TOWNHALL_MEDIA_UDP_PORT=str(self.media_udp_port),
            TOWNHALL_MEDIA_TCP_PORT=str(self.media_tcp_port),
            TOWNHALL_MEDIA_ADDRESSES="127.0.0.1",
            TOWNHALL_LOG_LEVEL=os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
            TOWNHALL_MEASURE_FORWARDING_DELAY="1" if self.measure_delay else "0",
        )

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [*self.command, *args], env=self._env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise TownhallError(f"townhall {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _invite_token(self, room: str, role: str) -> str:
        link = self._cli("invite", room, "--role", role).strip().splitlines()[-1]
        tokens = parse_qs(urlsplit(link).query).get("t")
        if not tokens:
            raise TownhallError(f"no ?t= token in the invite link {link!r}")
        return tokens[0]

    async def start(self, timeout: float = 20.0) -> None:
        self._data_dir = Path(tempfile.mkdtemp(prefix="townhall-bench-data-"))
        for index in range(self.rooms):
            room_name = f"bench-{os.getpid()}-{int(time.time())}-{index}"
            room_line = await asyncio.to_thread(self._cli, "room", "create", room_name)
            room = room_line.split("\t")[0].strip() or room_name
            for role in ("speaker", "listener"):
                self._tokens[index, role] = await asyncio.to_thread(self._invite_token, room,
                                                                     role)

        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [*self.command, "serve", "--no-captions"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        # limit=0: the default connector holds at most 100 connections, one per participant here
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise TownhallError(f"townhall serve exited with {self._process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"http://127.0.0.1:{self.http_port}/") as response:
                    if response.status < 500:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError("townhall did not answer on HTTP")
            await asyncio.sleep(0.1)

    async def _join(
        self, role: str, name: str, consumer: SyntheticConsumer | None = None, room: int = 0
    ) -> _Signalling:
        assert self._http is not None
        session = _Signalling(self._http, f"ws://127.0.0.1:{self.http_port}/ws", name)
        session.consumer = consumer
        self._sessions.append(session)
        await session.join(self._tokens[room, role])
        return session

    async def connect_producer(self, producer: SyntheticProducer, room: int = 0) -> None:
        session = await self._join("speaker", "producer", room=room)
        session.producer = producer
        offer = await producer.create_offer()
        sources = {"audio": "microphone", "video": "camera"}
        tracks = [{"mid": mid, "source": sources[kind]} for kind, mid in producer.mids.items()]
        answer = await session.request(
            {"type": "publish", "sdp": offer, "tracks": tracks}, "publish-answer"
        )
        await producer.accept_answer(answer["sdp"])

    async def connect_consumer(self, consumer: SyntheticConsumer, room: int = 0) -> None:
        session = await self._join("listener", f"consumer-{next(self._names)}", consumer, room)
        await asyncio.wait_for(session.answered.wait(), 20)
        await consumer.wait_connected()

    async def join_meeting(
        self, people: list[tuple[SyntheticProducer, SyntheticConsumer]], interval: float = 0.0
    ) -> None:
        """Everyone joins as a speaker, publishes, and receives what the room sends them (the
        room's last-N and, with ``tile``, layout hints decide which videos and layers).

        Each person's receiving connection is up before the next one joins. Every join
        renegotiates everyone's receiving connection; when joins overlapped with connections
        still being set up, the benchmark's aiortc clients raised ``IndexError`` in their
        connect task and some of their connections closed before connecting (50 people)."""
        #: (n, session, consumer) whose receiving connection is not known to be up yet
        waiting: list[tuple[int, _Signalling, SyntheticConsumer]] = []
        for n, (producer, consumer) in enumerate(people):
            session = await self._join("speaker", f"person-{n}", consumer)
            session.tile = self.tile
            session.producer = producer
            offer = await producer.create_offer()
            sources = {"audio": "microphone", "video": "camera"}
            tracks = [{"mid": mid, "source": sources[kind]} for kind, mid in producer.mids.items()]
            answer = await session.request(
                {"type": "publish", "sdp": offer, "tracks": tracks}, "publish-answer"
            )
            try:
                await producer.accept_answer(answer["sdp"])
            except ConnectionError as exc:
                pc = producer.pc
                raise ConnectionError(
                    f"person-{n}'s publishing transport: {exc} (ICE {pc.iceConnectionState}, "
                    f"gathering {pc.iceGatheringState}, signalling {pc.signalingState})"
                ) from None
            waiting.append((n, session, consumer))
            if n == 0:
                continue  # nothing to receive until someone else publishes
            for n_waiting, session_waiting, consumer_waiting in waiting:
                await asyncio.wait_for(session_waiting.answered.wait(), 60)
                await self._receiving(n_waiting, consumer_waiting)
            waiting.clear()
            await asyncio.sleep(interval)

    @staticmethod
    async def _receiving(n: int, consumer: SyntheticConsumer) -> None:
        """Wait for person ``n``'s ``consumer`` to connect; a connection the server lost
        meanwhile is offered again on a new one (``subscribe-offer`` with the next
        ``connection``)."""
        try:
            for _ in range(3):
                pc = consumer.pc
                try:
                    await consumer.wait_connected()
                    return
                except ConnectionError:
                    await asyncio.sleep(5)
                    if consumer.pc is pc:
                        raise
            await consumer.wait_connected()
        except ConnectionError as exc:
            pc = consumer.pc
            raise ConnectionError(
                f"person-{n}'s receiving transport: {exc} (ICE {pc.iceConnectionState}, "
                f"gathering {pc.iceGatheringState}, signalling {pc.signalingState})"
            ) from None

    @property
    def restarts(self) -> int:
        """New receiving connections the server offered (each after it lost one)."""
        return sum(s.restarts for s in self._sessions)

    async def metrics(self) -> str:
        """The server's ``/metrics`` text."""
        assert self._http is not None
        async with self._http.get(f"http://127.0.0.1:{self.http_port}/metrics") as response:
            return await response.text()

    async def leave_all(self) -> None:
        """Everyone leaves (their signalling says so and closes); the server stays up."""
        for session in self._sessions:
            with contextlib.suppress(Exception):
                await session.close()

    async def stop(self) -> None:
        await self.leave_all()
        for session in self._sessions:
            if session.consumer is not None and session.name == "producer":
                await session.consumer.close()
        self._sessions.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
