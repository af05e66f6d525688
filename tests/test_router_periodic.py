"""The router's periodic work leaves room for packets in a large meeting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from support import Clock
from townhall import beat
from townhall.sfu import router as router_module
from townhall.sfu.audio_activity import Activity
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.transport import Codec, IncomingTrack


async def test_receiver_reports_and_audio_narrowing_take_one_step_per_producer_and_transport(
) -> None:
    """In a 50-person meeting, sending every producer's receiver reports in one step held the
    event loop for up to 5.7 ms (a traced benchmark run)."""
    clock = Clock(10.0)
    router = Router("periodic", clock=clock)
    try:
        for n in range(5):
            transport = router.create_transport(f"person-{n}")
            track = IncomingTrack(mid="0", kind="audio", codec=Codec("audio/opus", 48000, 111, 2),
                                  ssrcs=(1000 + n,), mid_extension=None,
                                  audio_level_extension=None, rtcp_ssrc=1)
            producer = Producer(f"person-{n}", "microphone", track, transport, clock)
            router.producers[producer.id] = producer
        assert sum(1 for _ in router._send_reports()) >= 5 + 5
        activity = Activity(frozenset(), None, frozenset())
        assert sum(1 for _ in router._narrow_audio(activity)) == 5
    finally:
        await router.close()


class _Pair:
    """Stands in for a linked transport's media path: what it counts, and its close()."""

    def __init__(self) -> None:
        self.received = 0

    def close(self) -> None:
        pass


async def test_a_transport_that_hears_nothing_for_the_silence_timeout_is_closed_once() -> None:
    clock = Clock(10.0)
    router = Router("silence", clock=clock)
    talking, silent, unlinked = (router.create_transport(name) for name in ("a", "b", "c"))
    paths = {t: _Pair() for t in (talking, silent)}
    for transport, path in paths.items():
        transport._path = path  # type: ignore[assignment]
    closed: list[str] = []
    try:
        for second in range(int(router_module.SILENCE_TIMEOUT) + 3):
            paths[talking].received += 1  # a datagram a second, of any kind
            if second == 0:
                paths[silent].received = 7  # heard once, then nothing
            router._watch_silence()
            await asyncio.sleep(0.01)  # let a closing transport finish
            closed += [t.name for t in (talking, silent, unlinked)
                       if t.name not in closed and t not in router._transports]
            if second == int(router_module.SILENCE_TIMEOUT) - 1:
                assert closed == [], "not before the timeout"
            clock.now += 1.0
        assert closed == ["silence/b"]
        assert silent.datagrams_received is None  # unlinked by its close
    finally:
        await router.close()


async def test_the_routers_tick_runs_every_beat_without_waking_the_runner_every_beat() -> None:
    """The tick is called from the beats' rides (``beat.Wakeups.every_beat``); the runner of
    periodic work wakes only for the allocation, the reports and the silence check."""
    router = Router("cadence")
    periodic = beat.shared()
    wakes: list[float] = []
    ticks: list[float] = []
    audio = router._audio
    real_tick = audio.tick

    def counted(producers: Iterable[Producer]) -> Activity:
        ticks.append(time.monotonic())
        return real_tick(producers)

    audio.tick = counted  # type: ignore[method-assign]
    periodic.watch = wakes.append
    try:
        await asyncio.sleep(2.05)
    finally:
        periodic.watch = None
        await router.close()
    assert 19 <= len(ticks) <= 21
    assert len(wakes) <= 7  # 2 s: four allocations, two reports, two silence checks, at most
