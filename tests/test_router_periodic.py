"""The router's periodic work leaves room for packets in a large meeting."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

from townhall.sfu import router as router_module
from townhall.sfu.router import Router


async def test_periodic_work_in_steps_lets_the_event_loop_in_between() -> None:
    router = Router("periodic")
    ran: list[str] = []
    done = asyncio.Event()

    def sweep() -> Iterator[None]:
        for _ in range(10):  # ten transports' worth, 3 ms each
            deadline = time.perf_counter() + 0.003
            while time.perf_counter() < deadline:
                pass
            ran.append("step")
            yield
        done.set()

    async def packets() -> None:
        while not done.is_set():
            ran.append("packet")
            await asyncio.sleep(0)

    try:
        work = asyncio.ensure_future(router._every(0.01, sweep))
        await asyncio.wait_for(asyncio.gather(packets(), done.wait()), 5)
        work.cancel()
    finally:
        await router.close()
    steps = [i for i, what in enumerate(ran) if what == "step"]
    gaps = sum(1 for a, b in itertools.pairwise(steps) if b > a + 1)
    assert len(steps) == 10
    assert router_module.STEP_TIME < 0.003
    assert gaps == 9  # packets got in after every step longer than STEP_TIME


async def test_short_steps_run_together_without_a_trip_through_the_loop() -> None:
    router = Router("periodic")
    ran: list[str] = []
    done = asyncio.Event()

    def sweep() -> Iterator[None]:
        for _ in range(50):
            ran.append("step")
            yield
        done.set()

    async def packets() -> None:
        while not done.is_set():
            ran.append("packet")
            await asyncio.sleep(0)

    try:
        work = asyncio.ensure_future(router._every(0.01, sweep))
        await asyncio.wait_for(asyncio.gather(packets(), done.wait()), 5)
        work.cancel()
    finally:
        await router.close()
    first = ran.index("step")
    assert ran[first:first + 50] == ["step"] * 50
