"""Receiving preferences over the real signalling: last-N set by the host, pins, audio-only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from support import Attendee, RunningServer, ToneTrack


def _next(attendee: Attendee, kind: str, where: Any,
          timeout: float = 10) -> Awaitable[dict[str, Any]]:
    """The first ``kind`` message matching ``where`` that arrives from now on."""
    return _wait(attendee, kind, where, len(attendee.messages), timeout)


async def _wait(attendee: Attendee, kind: str, where: Any, start: int,
                timeout: float) -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        for message in attendee.messages[start:]:
            if message["type"] == kind and where(message):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} within {timeout} s: {attendee.messages[start:]}")


async def _frames_grow(attendee: Attendee, key: tuple[str, str], seconds: float = 1.5) -> int:
    before = attendee.frames[key]
    await asyncio.sleep(seconds)
    return attendee.frames[key] - before


async def test_last_n_pins_and_audio_only_decide_which_cameras_a_participant_receives(
    server: RunningServer,
) -> None:
    room = await server.create_room("receiving")
    host = Attendee(server.ws_url, server.token(room, "host"), "host")
    first = Attendee(server.ws_url, server.token(room, "speaker"), "first")
    second = Attendee(server.ws_url, server.token(room, "speaker"), "second")
    people = [host, first, second]
    try:
        for person in people:
            await person.join()
        assert host.joined["room"]["last_n"] == 6
        await host.send({"type": "last-n", "n": 1})
        changed = await first.wait_for("room", where=lambda m: m["last_n"] == 1)
        assert changed["locked"] is False
        await first.publish(audio_track=ToneTrack(loud=False))
        await second.publish(audio_track=ToneTrack(loud=False))
        # Nobody has spoken: the earliest to join with a camera is the one received.
        await host.wait_for("forwarding", where=lambda m: m["video"] == [first.id])
        await host.wait_frames((first.id, "camera"), 10)
        assert host.frames[(second.id, "camera")] == 0
        assert await _frames_grow(host, (second.id, "microphone")) > 0, "audio is not limited"

        pinned = _next(host, "forwarding", lambda m: len(m["video"]) == 2)
        await host.send({"type": "pin", "participants": [second.id]})
        assert sorted((await pinned)["video"]) == sorted([first.id, second.id])
        await host.wait_frames((second.id, "camera"), 10)

        audio_only = _next(host, "forwarding", lambda m: m["video"] == [])
        await host.send({"type": "receive", "video": False})
        await audio_only
        await asyncio.sleep(0.5)
        assert await _frames_grow(host, (first.id, "camera")) == 0
        assert await _frames_grow(host, (first.id, "microphone")) > 0
        assert await _frames_grow(second, (first.id, "camera")) > 0, "others keep receiving"

        resumed = _next(host, "forwarding", lambda m: len(m["video"]) == 2)
        await host.send({"type": "receive", "video": True})
        await resumed
        assert await _frames_grow(host, (first.id, "camera")) > 5, "video resumes at once"

        await first.send({"type": "last-n", "n": 3})
        error = await first.wait_for("error")
        assert (error["code"], error["request"]) == ("forbidden", "last-n")
        await host.send({"type": "last-n", "n": 41})
        error = await host.wait_for("error", where=lambda m: m["request"] == "last-n")
        assert error["code"] == "bad-request"
    finally:
        for person in people:
            await person.close()
