"""``GET /metrics`` in the Prometheus text format, and ``GET /healthz``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from townhall.server.app import Services

from townhall.server.keys import SERVICES
from townhall.sfu import native, router

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _histogram(name: str, text: str, counts: list[int], total: float) -> list[str]:
    from townhall.sfu.delay import BUCKETS

    lines = [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
    lines += [f"{name}_sum {total:.6f}", f"{name}_count {cumulative}"]
    return lines


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
        ("townhall_silent_connections_total", "counter", c.silent_connections,
         "Media connections closed because nothing arrived from the peer for "
         f"{router.SILENCE_TIMEOUT:.0f} s."),
    ):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    fast = native.load()
    if fast is not None:
        made, left, unsent = fast.counts()
        for name, value, text in (
                ("townhall_copies_native_total", made, "Copies the native fan-out made."),
                ("townhall_copies_python_total", left,
                 "Consumers the native fan-out left to Python (switches, RED, padding, TCP)."),
                ("townhall_copies_unsent_total", unsent,
                 "Copies the native path could not send (socket full, send or SRTP failed).")):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
    drops = services.ice.socket_drops() if services.ice is not None else None
    if drops is not None:
        name = "townhall_socket_drops_total"
        lines += [f"# HELP {name} Datagrams the kernel dropped at the media UDP socket: its "
                  "receive queue was full while the server was held up.",
                  f"# TYPE {name} counter", f"{name} {drops}"]
    watch = services.loop_watch
    if watch is not None:
        stall_lines: tuple[tuple[str, str, str, str], ...] = (
                ("townhall_loop_stalls_total", "counter", str(watch.stalls),
                 f"Times the event loop was held for {watch.long:g} s or more."),
                ("townhall_loop_stall_seconds_total", "counter", f"{watch.stalled:.3f}",
                 "Time the event loop was held in those stalls (a lower bound)."),
                ("townhall_loop_longest_stall_seconds", "gauge", f"{watch.longest:.3f}",
                 "The longest of those stalls since the server started."))
        for name, kind, shown, text in stall_lines:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {shown}"]
    delay = services.ice.delay if services.ice is not None else None
    if delay is not None:
        lines += _histogram("townhall_forwarding_delay_seconds",
                            "Time from a packet's arrival to its forwarding to one consumer.",
                            delay.counts, delay.sum_ns / 1e9)
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8")
