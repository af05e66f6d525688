"""The interface a benchmarked server offers to the harness.

A target owns one server process (so the harness can read its CPU time from ``/proc/PID/stat``)
and knows how to bring synthetic participants into its rooms (one unless the target was made with
``rooms``; ``room`` is the index of one). The harness is responsible for
the network namespace; a target only ever talks to 127.0.0.1.
"""

from __future__ import annotations

from typing import Protocol

from participants import SyntheticConsumer, SyntheticProducer


class Target(Protocol):
    name: str

    @property
    def pid(self) -> int:
        """PID of the server process whose CPU time is measured (all its threads)."""
        ...

    async def start(self) -> None:
        """Start the server, wait until it answers, and create the rooms for this run."""
        ...

    async def connect_producer(self, producer: SyntheticProducer, room: int = 0) -> None:
        """Join the room as a participant that publishes ``producer``'s tracks; return once the
        producer's media transport is connected and sending."""
        ...

    async def connect_consumer(self, consumer: SyntheticConsumer, room: int = 0) -> None:
        """Join the room as a participant that receives everything published so far; return once
        the consumer's media transport is connected."""
        ...

    async def stop(self) -> None:
        """Leave, close signalling and stop the server process. Idempotent."""
        ...
