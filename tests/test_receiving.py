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
        first_voice = ToneTrack(loud=False)
        await first.publish(audio_track=first_voice)
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

        # First speaks; an audio-only participant hears the loudest speaker only.
        first_voice.loud = True
        audio_only = _next(host, "forwarding", lambda m: m["video"] == [])
        await host.send({"type": "receive", "video": False})
        await audio_only
        await asyncio.sleep(0.5)
        assert await _frames_grow(host, (first.id, "camera")) == 0
        assert await _frames_grow(host, (first.id, "microphone")) > 0
        assert await _frames_grow(host, (second.id, "microphone")) == 0
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


async def _microphones_in(people: list[Attendee], seconds: float) -> list[dict[str, int]]:
    """Audio packets each attendee received per sender during the next ``seconds``."""
    before = [p.counts.snapshot() for p in people]
    await asyncio.sleep(seconds)
    return [{sender: count - start.get((sender, source), 0)
             for (sender, source), count in p.counts.packets.items()
             if source == "microphone" and count > start.get((sender, source), 0)}
            for p, start in zip(people, before, strict=True)]


async def test_an_audio_only_participant_hears_only_the_loudest_of_three_talking_at_once(
    server: RunningServer,
) -> None:
    room = await server.create_room("crosstalk")
    speakers = [Attendee(server.ws_url, server.token(room, "speaker"), f"speaker {n}",
                         count_only=True) for n in range(3)]
    tones = [ToneTrack() for _ in speakers]  # all three talk at once
    audio_only = Attendee(server.ws_url, server.token(room, "speaker"), "on a poor link",
                          count_only=True)
    everything = Attendee(server.ws_url, server.token(room, "speaker"), "on a good link",
                          count_only=True)
    listeners = [audio_only, everything]
    try:
        for person in [*speakers, *listeners]:
            await person.join()
        await audio_only.send({"type": "receive", "video": False})
        for person, tone in zip(speakers, tones, strict=True):
            await person.publish(video=False, audio_track=tone)
        ids = [s.id for s in speakers]
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # until the connections carry every stream, and the selection settled
            heard, full = await _microphones_in(listeners, 1.0)
            if len(full) == 3 and len(heard) == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, (heard, full)
        heard, full = await _microphones_in(listeners, 1.5)
        assert set(full) == set(ids) and min(full.values()) > 50  # 75 packets in 1.5 s each
        assert len(heard) == 1 and next(iter(heard.values())) > 50, heard
        first = next(iter(heard))

        # The one heard stops talking: another of the two still talking takes over.
        tones[ids.index(first)].loud = False
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            heard, = await _microphones_in([audio_only], 1.0)
            if len(heard) == 1 and first not in heard:
                break
            assert asyncio.get_running_loop().time() < deadline, heard
        heard, = await _microphones_in([audio_only], 1.5)
        assert len(heard) == 1 and first not in heard and next(iter(heard.values())) > 50
    finally:
        for person in [*speakers, *listeners]:
            await person.close()
