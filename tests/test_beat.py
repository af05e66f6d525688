"""Periodic work of different intervals wakes the process together."""

from __future__ import annotations

import asyncio

import pytest

from townhall import beat


def test_the_next_beat_is_the_first_multiple_of_the_interval_after_now() -> None:
    assert beat.next_beat(10.05, 0.1) == pytest.approx(10.1)
    assert beat.next_beat(1.0, 0.5) == pytest.approx(1.5)  # strictly after
    assert beat.next_beat(0.999, 1.0) == pytest.approx(1.0)


async def test_work_of_different_intervals_falls_due_in_the_same_wake_up() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    await beat.sleep_to_next(0.2)  # start just after a beat of both intervals

    async def tick() -> None:
        for _ in range(4):
            due = await beat.sleep_to_next(0.05)
            order.append(f"tick {due:.2f}")
            # runs after every callback the same wake-up made ready
            loop.call_soon(order.append, f"after tick {due:.2f}")

    async def slow() -> None:
        due = await beat.sleep_to_next(0.2)
        order.append(f"slow {due:.2f}")
        loop.call_soon(order.append, f"after slow {due:.2f}")

    await asyncio.gather(tick(), slow())
    slow_due = next(entry for entry in order if entry.startswith("slow")).split()[1]
    # the fourth tick fell due with the slow work, and both ran in the same turn of the loop:
    # each before anything the other asked to run next
    assert order.index(f"slow {slow_due}") < order.index(f"after tick {slow_due}")
    assert order.index(f"tick {slow_due}") < order.index(f"after slow {slow_due}")
