"""Time per transport feedback packet: ``TwccSender.feedback``, and ``Router.rtcp_received``
(the router's handling around it), in a loop.

    python bench/twcc_feedback.py [--feedbacks 20000] [--runs 3]

Each feedback packet reports 15 packets of 1,000 bytes sent in three frames 33 ms apart (five
packets 0.5 ms apart each), all arrived 20 ms after they were sent: the shape of what a consumer
sends every 100 ms for one video stream. The sender numbers the packets as the fan-out does
(``TwccSender.block``) and only ``feedback`` is timed. Prints µs per feedback packet for the
Python path and, when the native piece is built, the C one; then the same through a router's
``rtcp_received``, as the packet arrives after SRTCP (the native path where built).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from participants import twcc_feedback  # noqa: E402
from townhall.sfu import twcc  # noqa: E402
from townhall.sfu.router import Router  # noqa: E402

FRAMES = 3
PACKETS_PER_FRAME = 5


def per_feedback(native: bool, feedbacks: int) -> float:
    """Mean µs of one ``feedback`` call (wall clock: run it on a quiet machine)."""
    sender = twcc.TwccSender(5, native=native)
    return _timed(sender, sender.feedback, feedbacks)


async def per_router_feedback(feedbacks: int) -> float:
    """Mean µs of one ``Router.rtcp_received`` with a transport feedback packet."""
    router = Router("bench")
    transport = router.create_transport("receiver")
    sender = router._transports[transport].video.twcc = twcc.TwccSender(5)
    try:
        return _timed(sender, lambda packet: router.rtcp_received(transport, packet), feedbacks)
    finally:
        await router.close()


def _timed(sender: twcc.TwccSender, take: Callable[[bytes], object], feedbacks: int) -> float:
    now, sequence, total = 1.0, 0, 0.0
    for count in range(feedbacks):
        arrivals: list[tuple[int, int]] = []
        for _ in range(FRAMES):
            for _ in range(PACKETS_PER_FRAME):
                sender.block(1000, now)
                arrivals.append((sequence, int((now + 0.02) * 1_000_000)))
                sequence += 1
                now += 0.0005
            now += 0.033
        packet = twcc_feedback(1, 2, count & 0xFF, arrivals)
        started = time.perf_counter()
        take(packet)
        total += time.perf_counter() - started
    return total / feedbacks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feedbacks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = [False] + ([True] if twcc.native_feedback is not None else [])
    for native in paths:
        runs = [per_feedback(native, args.feedbacks) for _ in range(args.runs)]
        print(f"{'C' if native else 'Python'}: "
              + ", ".join(f"{value:.2f}" for value in runs) + " µs per feedback packet")
    runs = [asyncio.run(per_router_feedback(args.feedbacks)) for _ in range(args.runs)]
    print("Router.rtcp_received: " + ", ".join(f"{value:.2f}" for value in runs)
          + " µs per feedback packet")


if __name__ == "__main__":
    main()
