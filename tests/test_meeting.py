"""Integration over loopback: aiortc participants meet through the real signalling."""

from __future__ import annotations

import asyncio

from conftest import RunningServer
from support import Attendee


async def _attendees(server: RunningServer, room: str, roles: list[str]) -> list[Attendee]:
    people = []
    for n, role in enumerate(roles):
        attendee = Attendee(server.ws_url, server.token(room, role), f"person {n}")
        await attendee.join()
        people.append(attendee)
    return people


async def test_three_participants_each_decode_the_others_audio_and_video(
    server: RunningServer,
) -> None:
    room = await server.create_room("three")
    people = await _attendees(server, room, ["host", "speaker", "speaker"])
    try:
        await asyncio.gather(*(p.publish() for p in people))
        for me in people:
            for other in people:
                if other is not me:
                    await me.wait_frames((other.id, "camera"), 30)
                    await me.wait_frames((other.id, "microphone"), 25)
                    assert me.frame_sizes[(other.id, "camera")] == (320, 240)
            assert not any(key[0] == me.id for key in me.frames), "nobody receives themselves"
    finally:
        for p in people:
            await p.close()
