"""The router's periodic work leaves room for packets in a large meeting."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

from townhall.sfu import router as router_module
from townhall.sfu.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


async def _interleaving(step_time: float, steps: int) -> list[str]:
    """What ran, in order: a sweep of ``steps`` steps each taking ``step_time`` (on the
    router's clock), and a task standing for arriving packets."""
    clock = Clock()
    router = Router("periodic", clock=clock)
    ran: list[str] = []
    done = asyncio.Event()

    def sweep() -> Iterator[None]:
        for _ in range(steps):
            clock.now += step_time
            ran.append("step")
            yield
        done.set()

    async def packets() -> None:
        while not done.is_set():
            ran.append("packet")
            await asyncio.sleep(0)

    work = asyncio.ensure_future(router._every(0.001, sweep))
    try:
        await asyncio.wait_for(asyncio.gather(packets(), done.wait()), 5)
    finally:
        work.cancel()
        await router.close()
    return ran


async def test_periodic_work_in_steps_lets_the_event_loop_in_between() -> None:
    ran = await _interleaving(3 * router_module.STEP_TIME, 10)
    steps = [i for i, what in enumerate(ran) if what == "step"]
    assert len(steps) == 10
    # packets got in after every step that took longer than STEP_TIME
    assert all(b > a + 1 for a, b in itertools.pairwise(steps))


async def test_short_steps_run_together_without_a_trip_through_the_loop() -> None:
    ran = await _interleaving(0.0, 50)
    first = ran.index("step")
    assert ran[first:first + 50] == ["step"] * 50
