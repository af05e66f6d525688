"""Long garbage-collector pauses are reported, short ones are not."""

from __future__ import annotations

import gc
import logging

import pytest

from townhall.server.pauses import PauseWatch, watch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_collection_longer_than_the_limit_is_logged_with_its_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pause_watch = PauseWatch(long=0.02, clock=clock)
    with caplog.at_level(logging.WARNING, logger="townhall.server.pauses"):
        pause_watch("start", {"generation": 0})
        clock.now += 0.005
        pause_watch("stop", {"generation": 0, "collected": 10, "uncollectable": 0})
        pause_watch("start", {"generation": 2})
        clock.now += 0.4
        pause_watch("stop", {"generation": 2, "collected": 1234, "uncollectable": 0})
    assert pause_watch.long_pauses == [(2, pytest.approx(0.4))]
    assert [r.getMessage() for r in caplog.records] == [
        "garbage collection (generation 2) held the server for 400 ms (1234 objects freed)"]


def test_watching_follows_real_collections() -> None:
    pause_watch = watch(long=0.0)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(pause_watch)
    assert any(generation == 2 for generation, _ in pause_watch.long_pauses)
