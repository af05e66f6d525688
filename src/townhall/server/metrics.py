"""``GET /metrics`` in the Prometheus text format, and ``GET /healthz``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from townhall.server.app import Services

from townhall.server.keys import SERVICES

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    rooms = services.registry.rooms
    participants = sum(len(r.participants) for r in rooms)
    producers = sum(len(p.producers) for r in rooms for p in r.participants.values())
    consumers = sum(len(p.consumers) for r in rooms for p in r.participants.values())
    c = services.counters
    lines = []
    for name, kind, value, text in (
        ("townhall_rooms", "gauge", len(rooms), "Rooms with a meeting in progress."),
        ("townhall_participants", "gauge", participants, "Participants in meetings."),
        ("townhall_producers", "gauge", producers, "Tracks being published."),
        ("townhall_consumers", "gauge", consumers, "Copies of tracks being sent."),
        ("townhall_packets_received_total", "counter", c.packets_received,
         "RTP packets received from producers."),
        ("townhall_packets_forwarded_total", "counter", c.packets_forwarded,
         "RTP packets sent to consumers."),
        ("townhall_bytes_forwarded_total", "counter", c.bytes_forwarded,
         "RTP bytes sent to consumers."),
        ("townhall_packets_dropped_total", "counter", c.packets_dropped,
         "Malformed or unroutable packets dropped."),
        ("townhall_retransmissions_total", "counter", c.retransmissions,
         "Packets resent from the cache on NACK."),
        ("townhall_keyframe_requests_total", "counter", c.keyframe_requests,
         "Keyframe requests from consumers."),
    ):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8")
