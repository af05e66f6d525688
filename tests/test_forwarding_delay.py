"""The SFU measures how long it holds each forwarded packet, when asked to."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import aiohttp

from support import Attendee, make_config
from townhall.auth import tokens
from townhall.server import app as server_app
from townhall.sfu.delay import BUCKETS, ForwardingDelay


def test_a_forwarded_copy_counts_in_the_bucket_of_its_delay() -> None:
    delay = ForwardingDelay()
    delay.arrived_ns = time.time_ns() - 4_000_000  # arrived 4 ms ago
    delay.sent()
    delay.done()
    delay.sent()  # between datagrams: not a forwarded copy of one
    assert delay.count == 1
    bucket = delay.counts.index(1)
    assert BUCKETS[bucket - 1] < 0.004 <= BUCKETS[bucket]
    assert 4_000_000 <= delay.sum_ns < 1_000_000_000


def test_the_arrival_time_is_the_kernels_receive_timestamp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        delay = ForwardingDelay()
        delay.arrived(receiver.fileno())  # the first call turns timestamps on
        # The kernel switches timestamping on in deferred work: a datagram that arrives
        # before it has run carries no timestamp and reads as "now". Later ones must not.
        for _ in range(20):
            sender.sendto(b"x", receiver.getsockname())
            receiver.recv(16)
            time.sleep(0.02)
            delay.arrived(receiver.fileno())
            waited = time.time_ns() - delay.arrived_ns
            if waited >= 20_000_000:
                break
        assert 20_000_000 <= waited < 2_000_000_000, "the datagram's arrival, not the call's"


async def test_with_the_setting_on_metrics_show_the_forwarding_delay_of_real_media(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data").replace(measure_forwarding_delay=True)
    running = await server_app.start(config)
    running.services.config = running.services.config.replace(http_port=running.port)
    services = running.services
    room = (await services.store.create_room("delay")).id
    ws_url = running.base_url.replace("http", "ws", 1) + "/ws"
    people = [Attendee(ws_url, tokens.sign(services.secret, room, "speaker", 600, time.time()),
                       f"person {n}") for n in range(2)]
    try:
        for person in people:
            await person.join()
        await people[0].publish()
        await people[1].wait_frames((people[0].id, "camera"), 30)
        async with aiohttp.ClientSession() as http, \
                http.get(f"{running.base_url}/metrics") as response:
            text = await response.text()
    finally:
        for person in people:
            await person.close()
        await running.stop()
    count = _metric(text, "townhall_forwarding_delay_seconds_count")
    below_50ms = _metric(text, 'townhall_forwarding_delay_seconds_bucket{le="0.05"}')
    assert count >= 30, "every forwarded packet is counted"
    assert below_50ms >= 0.9 * count, "a quiet SFU holds a packet for well under 50 ms"


def _metric(text: str, name: str) -> int:
    found = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
    assert found is not None, f"{name} is missing from /metrics"
    return int(found[1])
