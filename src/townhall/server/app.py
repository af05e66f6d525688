"""The ``townhall serve`` process: one aiohttp application, one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from townhall.auth import tokens
from townhall.auth.secret import secret_for
from townhall.config import Config
from townhall.rooms.registry import RoomRegistry
from townhall.server import api, captions, captions_worker, metrics, pauses, session
from townhall.server.keys import SERVICES
from townhall.sfu.producer import Producer
from townhall.sfu.router import Counters, Router
from townhall.sfu.transport import Transport
from townhall.store import Store

logger = logging.getLogger(__name__)


STATIC = Path(__file__).resolve().parent.parent / "static"


@dataclass
class Services:
    config: Config
    secret: bytes
    store: Store
    registry: RoomRegistry
    counters: Counters
    ice: Any = None
    loop_watch: pauses.LoopWatch | None = None


class _RouterEvents:
    """Passes a router's events on to its live room."""

    def __init__(self, services_ref: list[Services], room_id: str) -> None:
        self._services = services_ref
        self._room_id = room_id

    def speaking_changed(self, router: Router, owners: frozenset[str]) -> None:
        room = self._services[0].registry.find(self._room_id)
        if room is not None:
            room.speaking_changed(owners)

    def transport_closed(self, router: Router, owner: str, transport: Transport) -> None:
        room = self._services[0].registry.find(self._room_id)
        if room is not None:
            room.transport_lost(owner, transport)

    def active_speaker_changed(self, router: Router, owner: str | None) -> None:
        room = self._services[0].registry.find(self._room_id)
        if room is not None:
            room.active_speaker_changed(owner)

    def forwarding_changed(self, router: Router, owner: str) -> None:
        room = self._services[0].registry.find(self._room_id)
        if room is not None:
            room.forwarding_changed(owner)

    def sent_layers_changed(self, router: Router, producer: Producer) -> None:
        room = self._services[0].registry.find(self._room_id)
        if room is not None:
            room.sent_layers_changed(producer.owner, producer.source, producer.sent_layers.count)


async def _page(request: web.Request) -> web.FileResponse:
    name = "room.html" if "room" in request.match_info else "index.html"
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


def build(services: Services) -> web.Application:
    app = web.Application(middlewares=[api.errors_middleware],
                          client_max_size=services.config.max_message_size)
    app[SERVICES] = services
    app.router.add_get("/", _page)
    app.router.add_get("/r/{room}", _page)
    app.router.add_get("/ws", session.handle)
    app.router.add_get("/ws/captions", captions.handle)
    app.router.add_static("/static/", STATIC)
    app.add_routes(api.routes)
    app.add_routes(metrics.routes)
    with contextlib.suppress(ImportError):
        whip = importlib.import_module("townhall.server.whip")
        app.add_routes(whip.routes)
    return app


async def open_services(config: Config) -> Services:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(config.database)
    await store.close_open_attendance(time.time())
    counters = Counters()
    ice = await _start_ice(config)
    services_ref: list[Services] = []

    def router_factory(room_id: str) -> Router:
        attach = ice.attach if ice is not None else None
        return Router(room_id, events=_RouterEvents(services_ref, room_id), attach=attach,
                      counters=counters, loudest_audio=config.loudest_audio,
                      audio_only_loudest=config.audio_only_loudest, red=config.audio_red)

    registry = RoomRegistry(store, router_factory, config.reconnect_grace)
    services = Services(config, secret_for(config), store, registry, counters, ice)
    services_ref.append(services)
    return services


async def _start_ice(config: Config) -> Any:
    try:
        from townhall.sfu.delay import ForwardingDelay
        from townhall.sfu.ice import IceMux
    except ImportError:
        return None
    from townhall.sfu import native

    delay = ForwardingDelay() if config.measure_forwarding_delay else None
    fast = native.load() if config.media_native_send else None
    mux = IceMux(config.media_addresses, config.media_udp_port, config.media_tcp_port,
                 delay=delay, native=fast)
    await mux.start()
    return mux


async def close_services(services: Services) -> None:
    if services.loop_watch is not None:
        await services.loop_watch.stop()
    await services.registry.close()
    if services.ice is not None:
        await services.ice.close()
    services.store.close()


def admin_link(services: Services) -> str:
    token = tokens.sign(services.secret, "*", "admin", services.config.invite_ttl, time.time())
    return f"{services.config.base_url}/?admin={token}"


def admin_line(services: Services, terminal: bool) -> str:
    """What ``serve`` prints about the administrator link: the link itself on a terminal;
    elsewhere (a service manager's journal, a file) only how to get one, since that output is
    kept and the link's token lets whoever reads it administer the server."""
    if terminal:
        return (f"Administrator link (valid {services.config.invite_ttl // 3600} h): "
                f"{admin_link(services)}")
    return ("Administrator link: not printed, this output is not a terminal; "
            "`townhall admin-link` prints one")


@dataclass
class Running:
    services: Services
    runner: web.AppRunner
    port: int
    worker: captions_worker.WorkerProcess | None = None

    @property
    def base_url(self) -> str:
        """This server's address as seen from this machine (its own bound address)."""
        return captions_worker.local_url(self.services.config, self.port)

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await close_services(self.services)
        await self.runner.cleanup()


async def start(
    config: Config, worker_program: Sequence[str] = captions_worker.PROGRAM
) -> Running:
    """Start the server in the running loop (``http_port`` 0 picks a free port).

    With ``config.captions_worker`` it starts the captions worker too: ``worker_program``
    followed by the ``captions`` arguments.
    """
    services = await open_services(config)
    services.loop_watch = pauses.LoopWatch()
    services.loop_watch.start()
    app = build(services)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    context = None
    if config.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key or None)
    site = web.TCPSite(runner, config.http_host, config.http_port, ssl_context=context)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else config.http_port
    running = Running(services, runner, port)
    if config.captions_worker:
        running.worker = _start_worker(services, port, worker_program)
    return running


def _start_worker(services: Services, port: int,
                  program: Sequence[str]) -> captions_worker.WorkerProcess:
    url = captions_worker.local_url(services.config, port)

    def command() -> list[str]:
        return [*program, *captions_worker.worker_arguments(services.config, url)]

    def environment() -> dict[str, str]:
        token = captions.worker_token(services.secret, captions.WORKER_TOKEN_TTL, time.time())
        return {captions_worker.TOKEN_VARIABLE: token}

    worker = captions_worker.WorkerProcess(command, environment=environment)
    worker.start()
    logger.info("captions worker: %s captions --server %s --asr-model %s", " ".join(program),
                url, services.config.asr_model)
    return worker


def serve(config: Config) -> None:
    """Run until interrupted (``townhall serve``)."""
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # A full collection stops the event loop for as long as it takes: 0.1-0.7 s with a
    # 40-person meeting's objects (some 440,000, mostly aiortc's), during which no packet is
    # forwarded.
    # Young generations keep their defaults; full collections come 100 times less often.
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1000)
    pauses.watch()
    asyncio.run(_serve(config))


async def _serve(config: Config) -> None:
    running = await start(config)
    services = running.services
    port_config = config.replace(http_port=running.port)
    services.config = port_config
    print(f"townhall is running at {port_config.base_url}", flush=True)
    print(admin_line(services, sys.stdout.isatty()), flush=True)
    if services.ice is not None:
        print(f"Media: UDP port {services.ice.udp_port}, TCP port {services.ice.tcp_port}",
              flush=True)
    if running.worker is not None:
        print(f"Captions worker started (speech model {config.asr_model!r}); "
              "--no-captions turns it off", flush=True)
    gc.freeze()  # what starting made lives as long as the process: no collection looks at it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutting down")
    await running.stop()
