"""Janus 1.1.2 (Debian) as a peer SFU for benchmarks: its config, its process, its VideoRoom API.

``JanusTarget`` implements ``target.Target``. It writes a minimal configuration directory (only the
VideoRoom plugin and the plain-HTTP transport on 127.0.0.1 are loaded, through folders that hold
links to just those two libraries), starts ``/usr/bin/janus`` on it, and drives the VideoRoom API
over HTTP with long polling:

    POST /janus                      {"janus": "create"}                     -> session id
    POST /janus/<session>            {"janus": "attach", plugin}             -> handle id
    POST /janus/<session>/<handle>   {"janus": "message", body, jsep?}       -> ack, then an event
    GET  /janus/<session>?maxev=N    long poll: events (plugin events, webrtcup, media, hangup)

Janus must run inside a network namespace of the benchmark's own. Janus 1.1.2 never gathers
candidates on a loopback interface (``janus_ice_setup_local`` skips ``IFF_LOOPBACK`` before it looks
at ``ice_enforce_list``, so neither ``"lo"`` nor ``"127.0.0.1"`` yields a candidate and every
publish fails with "Error setting ICE locally"). The harness therefore gives its namespace a veth
pair (both ends inside it) with a private address (``BENCH_ADDRESS``) and the config enforces that
address; packets between two local addresses still only travel the kernel's local path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from participants import SyntheticConsumer, SyntheticProducer

logger = logging.getLogger(__name__)

JANUS_BINARY = "/usr/bin/janus"
JANUS_LIB_DIR = Path("/usr/lib/x86_64-linux-gnu/janus")
VIDEOROOM = "janus.plugin.videoroom"
BENCH_ADDRESS = "10.99.99.1"  # on the veth interface the harness adds to its own namespace


class JanusError(RuntimeError):
    """Janus answered a request with an error, or the VideoRoom plugin did."""


@dataclass(frozen=True)
class JanusConfig:
    http_port: int = 8088
    event_loops: int | None = None  # None: Janus's default, one loop (thread) per handle
    #: ms between transport feedback packets to a publisher (None: Janus's default, 200 ms)
    twcc_period: int | None = None
    debug_level: int = 4
    session_timeout: int = 60
    ice_address: str = BENCH_ADDRESS


def write_config(directory: Path, config: JanusConfig) -> Path:
    """Write a minimal Janus configuration into ``directory``; return the main config file."""
    plugins = directory / "plugins"
    transports = directory / "transports"
    empty = directory / "empty"
    for folder in (plugins, transports, empty):
        folder.mkdir(parents=True, exist_ok=True)
    # Janus loads every library in its folders; link only the two we want.
    for folder, library in (
        (plugins, "plugins/libjanus_videoroom.so"),
        (transports, "transports/libjanus_http.so"),
    ):
        link = folder / Path(library).name
        if not link.exists():
            link.symlink_to(JANUS_LIB_DIR / library)

    loops = f"\tevent_loops = {config.event_loops}\n" if config.event_loops else ""
    main = directory / "janus.jcfg"
    main.write_text(
        "general: {\n"
        f'\tconfigs_folder = "{directory}"\n'
        f'\tplugins_folder = "{plugins}"\n'
        f'\ttransports_folder = "{transports}"\n'
        f'\tevents_folder = "{empty}"\n'
        f'\tloggers_folder = "{empty}"\n'
        f"\tdebug_level = {config.debug_level}\n"
        f"\tsession_timeout = {config.session_timeout}\n"
        f"{loops}"
        "}\n"
        "certificates: {\n}\n"
        "media: {\n\tipv6 = false\n"
        + (f"\ttwcc_period = {config.twcc_period}\n" if config.twcc_period else "")
        + "}\n"
        "nat: {\n"
        "\tnice_debug = false\n"
        f'\tice_enforce_list = "{config.ice_address}"\n'
        "}\n"
        "plugins: {\n}\n"
        "transports: {\n}\n"
        "loggers: {\n}\n"
        "events: {\n\tbroadcast = false\n}\n"
    )
    (directory / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '\tjson = "plain"\n'
        '\tbase_path = "/janus"\n'
        "\thttp = true\n"
        f"\tport = {config.http_port}\n"
        '\tip = "127.0.0.1"\n'
        "\thttps = false\n"
        "}\n"
        "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
        "cors: {\n}\n"
    )
    # No static rooms: each run creates its own through the API.
    (directory / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


class JanusProcess:
    """One ``janus`` process on a generated configuration directory."""

    def __init__(self, config: JanusConfig, log_file: Path | None = None) -> None:
        self.config = config
        self.log_file = log_file
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("Janus is not running")
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}/janus"

    async def start(self, timeout: float = 15.0) -> None:
        if not os.path.exists(JANUS_BINARY):
            raise FileNotFoundError(f"{JANUS_BINARY} is missing: apt-get install -y janus")
        self._dir = Path(tempfile.mkdtemp(prefix="townhall-bench-janus-"))
        main = write_config(self._dir, self.config)
        command = [JANUS_BINARY, "-C", str(main), "-F", str(self._dir), "-o"]
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            command += ["-N", "-L", str(self.log_file)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"janus exited with {self._process.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/info") as response:
                        if response.status == 200:
                            info = await response.json(content_type=None)
                            if VIDEOROOM not in info.get("plugins", {}):
                                raise RuntimeError("Janus started without the VideoRoom plugin")
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError("Janus did not answer on its HTTP transport")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class JanusSession:
    """A Janus API session over HTTP with one long-polling task routing events by transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._counter = itertools.count()
        self.webrtcup: dict[int, asyncio.Event] = {}
        self.hangups: list[dict[str, Any]] = []

    def _transaction(self) -> str:
        return f"t{next(self._counter)}-{secrets.token_hex(4)}"

    async def _post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        async with self._http.post(self.url + path, json=message) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{message.get('janus')}: {reply.get('error')}")
        return reply

    async def create(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=70),
        )
        reply = await self._post("", {"janus": "create", "transaction": self._transaction()})
        self.session_id = int(reply["data"]["id"])
        self._poll_task = asyncio.create_task(self._poll())

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._post(
            f"/{self.session_id}",
            {"janus": "attach", "plugin": plugin, "transaction": self._transaction()},
        )
        handle = int(reply["data"]["id"])
        self.webrtcup[handle] = asyncio.Event()
        return handle

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create, list, ...): the answer is in the reply."""
        reply = await self._post(
            f"/{self.session_id}/{handle}",
            {"janus": "message", "body": body, "transaction": self._transaction()},
        )
        data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return data

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, Any] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """An asynchronous plugin request: Janus acks, and the answer arrives as an event."""
        transaction = self._transaction()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        message: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            await self._post(f"/{self.session_id}/{handle}", message)
            event = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return event

    async def trickle_completed(self, handle: int) -> None:
        """aiortc puts all its candidates in the SDP; tell Janus there are no more."""
        await self._post(
            f"/{self.session_id}/{handle}",
            {
                "janus": "trickle",
                "candidate": {"completed": True},
                "transaction": self._transaction(),
            },
        )

    async def _poll(self) -> None:
        assert self._http is not None
        url = f"{self.url}/{self.session_id}?maxev=10"
        while True:
            try:
                async with self._http.get(url) as response:
                    events = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep polling: the session dies without it
                logger.debug("long poll failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        transaction = event.get("transaction")
        if kind == "event" and transaction in self._pending:
            future = self._pending.pop(transaction)
            if not future.done():
                future.set_result(event)
        elif kind == "webrtcup":
            self.webrtcup.setdefault(int(event["sender"]), asyncio.Event()).set()
        elif kind == "hangup":
            self.hangups.append(event)
            logger.debug("Janus hung up handle %s: %s", event.get("sender"), event.get("reason"))
        elif kind not in ("keepalive", "media", "ack"):
            logger.debug("Janus event: %s", event)

    async def destroy(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        if self._http is not None:
            if self.session_id is not None:
                with contextlib.suppress(Exception):
                    await self._post(
                        f"/{self.session_id}",
                        {"janus": "destroy", "transaction": self._transaction()},
                    )
            await self._http.close()
            self._http = None


#: A Janus target's name: ``janus`` (Janus's defaults) or ``janus-1loop`` (``event_loops = 1``),
#: optionally followed by ``-twccN``: transport feedback to publishers every N ms rather than
#: Janus's default 200 (``janus-1loop-twcc100`` sends it as often as townhall does).
TARGET_NAME = re.compile(r"janus(?P<one_loop>-1loop)?(?:-twcc(?P<twcc>[1-9][0-9]*))?")


def janus_target(name: str, log_file: Path | None = None, rooms: int = 1,
                 http_port: int = 8088) -> JanusTarget | None:
    """The Janus target ``name`` (:data:`TARGET_NAME`) stands for, or None if it names none."""
    match = TARGET_NAME.fullmatch(name)
    if match is None:
        return None
    twcc = match["twcc"]
    return JanusTarget(name, event_loops=1 if match["one_loop"] else None, http_port=http_port,
                       log_file=log_file, rooms=rooms,
                       twcc_period=int(twcc) if twcc else None)


class JanusTarget:
    """Janus VideoRoom as a benchmark target: ``rooms`` rooms (one unless asked), each with one
    publisher and N subscribers."""

    def __init__(
        self,
        name: str = "janus",
        event_loops: int | None = None,
        http_port: int = 8088,
        log_file: Path | None = None,
        rooms: int = 1,
        twcc_period: int | None = None,
    ) -> None:
        self.name = name
        self.process = JanusProcess(
            JanusConfig(http_port=http_port, event_loops=event_loops, twcc_period=twcc_period),
            log_file=log_file,
        )
        self.session: JanusSession | None = None
        first = 1000 + secrets.randbelow(1_000_000)
        self.room_ids = [first + index for index in range(rooms)]
        #: each room's publisher, once connected
        self.publisher_ids: dict[int, int] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> None:
        await self.process.start()
        self.session = JanusSession(self.process.url)
        await self.session.create()
        handle = await self.session.attach()
        for room in self.room_ids:
            await self.session.request(
                handle,
                {
                    "request": "create",
                    "room": room,
                    "publishers": 100,
                    "bitrate": 2_000_000,
                    "fir_freq": 0,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "record": False,
                },
            )

    async def connect_producer(self, producer: SyntheticProducer, room: int = 0) -> None:
        assert self.session is not None
        handle = await self.session.attach()
        joined = await self.session.message(
            handle,
            {"request": "join", "ptype": "publisher", "room": self.room_ids[room],
             "display": "producer"},
        )
        self.publisher_ids[room] = int(joined["plugindata"]["data"]["id"])
        offer = await producer.create_offer()
        configured = await self.session.message(
            handle,
            {"request": "publish", "audio": True, "video": True},
            # rids are offered lowest first (q;h;f), as the browser client does; Janus assumes
            # highest first unless told
            jsep={"type": "offer", "sdp": offer, "rid_order": "lmh"},
        )
        await self.session.trickle_completed(handle)
        jsep = configured.get("jsep")
        if not jsep or jsep.get("type") != "answer":
            raise JanusError(f"publish: no SDP answer in {configured}")
        await producer.accept_answer(jsep["sdp"])
        await asyncio.wait_for(self.session.webrtcup[handle].wait(), 20)

    async def connect_consumer(self, consumer: SyntheticConsumer, room: int = 0) -> None:
        assert self.session is not None and room in self.publisher_ids
        handle = await self.session.attach()
        attached = await self.session.message(
            handle,
            {
                "request": "join",
                "ptype": "subscriber",
                "room": self.room_ids[room],
                "streams": [{"feed": self.publisher_ids[room]}],
            },
        )
        jsep = attached.get("jsep")
        if not jsep or jsep.get("type") != "offer":
            raise JanusError(f"subscribe: no SDP offer in {attached}")
        answer = await consumer.answer(jsep["sdp"])
        await self.session.message(
            handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer}
        )
        await self.session.trickle_completed(handle)
        await consumer.wait_connected()

    async def join_meeting(
        self,
        people: list[tuple[SyntheticProducer, SyntheticConsumer]],
        videos: int = 6,
        substream: int | None = None,
        interval: float = 0.0,
    ) -> None:
        """Everyone publishes; then each subscribes, in one multistream subscription, to every
        other participant's audio and to the video of ``videos`` others (a fixed choice: the
        next ones in joining order — Janus has no last-N), at simulcast ``substream``."""
        assert self.session is not None
        feeds: list[tuple[int, SyntheticProducer]] = []
        for n, (producer, _) in enumerate(people):
            handle = await self.session.attach()
            joined = await self.session.message(
                handle,
                {"request": "join", "ptype": "publisher", "room": self.room_ids[0],
                 "display": f"person-{n}"},
            )
            offer = await producer.create_offer()
            configured = await self.session.message(
                handle,
                {"request": "publish", "audio": True, "video": True},
                jsep={"type": "offer", "sdp": offer, "rid_order": "lmh"},
            )
            await self.session.trickle_completed(handle)
            jsep = configured.get("jsep")
            if not jsep or jsep.get("type") != "answer":
                raise JanusError(f"publish: no SDP answer in {configured}")
            await producer.accept_answer(jsep["sdp"])
            await asyncio.wait_for(self.session.webrtcup[handle].wait(), 20)
            await asyncio.sleep(interval)
            feeds.append((int(joined["plugindata"]["data"]["id"]), producer))
        for n, (_, consumer) in enumerate(people):
            others = feeds[n + 1:] + feeds[:n]
            streams = [{"feed": feed, "mid": producer.mids["audio"]} for feed, producer in others]
            streams += [{"feed": feed, "mid": producer.mids["video"]}
                        for feed, producer in others[:videos]]
            handle = await self.session.attach()
            attached = await self.session.message(
                handle, {"request": "join", "ptype": "subscriber", "room": self.room_ids[0],
                         "streams": streams},
            )
            jsep = attached.get("jsep")
            if not jsep or jsep.get("type") != "offer":
                raise JanusError(f"subscribe: no SDP offer in {attached}")
            answer = await consumer.answer(jsep["sdp"])
            await self.session.message(
                handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer}
            )
            await self.session.trickle_completed(handle)
            await consumer.wait_connected()
            if substream is not None:
                video_mids = [s["mid"] for s in attached["plugindata"]["data"].get("streams", [])
                              if s.get("type") == "video"]
                await self.session.message(handle, {
                    "request": "configure",
                    "streams": [{"mid": mid, "substream": substream} for mid in video_mids],
                })

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.destroy()
            self.session = None
        await self.process.stop()
