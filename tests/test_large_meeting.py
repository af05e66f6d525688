"""A 12-participant meeting of aiortc participants: last-N video, the active speaker, audio-only.

Kept light for a small machine: 160×120 video at 10 fps, and nothing is decoded; each participant
counts the RTP packets (and VP8 keyframes) it receives per sender.
"""

from __future__ import annotations

import asyncio
import time

from support import Attendee, PatternTrack, RunningServer, ToneTrack

PEOPLE = 12
LAST_N = 6


async def _received_in(people: list[Attendee], seconds: float) -> list[dict[tuple[str, str], int]]:
    """Packets each attendee received per (sender, source) during the next ``seconds``."""
    before = [p.counts.snapshot() for p in people]
    await asyncio.sleep(seconds)
    return [{key: count - start.get(key, 0) for key, count in p.counts.packets.items()
             if count > start.get(key, 0)} for p, start in zip(people, before, strict=True)]


def _cameras(received: dict[tuple[str, str], int]) -> set[str]:
    return {sender for (sender, source), count in received.items() if source == "camera"}


async def _until_flowing(people: list[Attendee], expected: list[set[str]],
                         timeout: float = 30) -> None:
    """Wait until each attendee receives a steady flow (≥ 5 packets per second) from every
    camera it expects: connections of 24 transports take a while on a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        received = await _received_in(people, 1.0)
        lacking = [(p.name, sorted(e - {s for (s, src), n in got.items()
                                        if src == "camera" and n >= 5}))
                   for p, e, got in zip(people, expected, received, strict=True)]
        lacking = [item for item in lacking if item[1]]
        if not lacking:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no steady video after {timeout} s: {lacking}")


async def test_twelve_participants_receive_the_last_n_cameras_and_a_new_speaker_within_a_second(
    server: RunningServer,
) -> None:
    room = await server.create_room("twelve")
    people = [Attendee(server.ws_url, server.token(room, "host" if n == 0 else "speaker"),
                       f"person {n}", count_only=True) for n in range(PEOPLE)]
    tones = [ToneTrack(loud=False) for _ in people]
    # Every camera is on; every other microphone (person 9's among them) is unmuted: more than
    # the three that audio selection forwards, half the cost of encoding twelve.
    microphones = [n % 2 == 1 for n in range(PEOPLE)]
    try:
        for person in people:
            await person.join()
        await asyncio.gather(*(person.publish(audio=on, audio_track=tone,
                                              pattern=PatternTrack(160, 120, 10))
                               for person, tone, on in zip(people, tones, microphones,
                                                           strict=True)))
        ids = [p.id for p in people]
        listener = people[-1]
        await listener.send({"type": "receive", "video": False})
        await listener.wait_for("forwarding", where=lambda m: m["video"] == [])

        # Nobody has spoken: everyone receives the cameras of the first six to join (but their
        # own), as `forwarding` says and as the packets show.
        for person in people[:-1]:
            expected = sorted([i for i in ids if i != person.id][:LAST_N])
            await person.wait_for("forwarding", where=lambda m, e=expected: sorted(m["video"]) == e,
                                  timeout=30)
        expected_sets = [set([i for i in ids if i != p.id][:LAST_N]) for p in people[:-1]]
        await _until_flowing(people[:-1], expected_sets)
        received = await _received_in(people, 2.0)
        for person, got in zip(people[:-1], received[:-1], strict=True):
            expected = set([i for i in ids if i != person.id][:LAST_N])
            assert _cameras(got) == expected, f"{person.name} received {got}"
        assert _cameras(received[-1]) == set(), f"audio-only received {received[-1]}"
        assert not any(source == "microphone" for got in received for _, source in got), \
            "silent microphones are not forwarded"

        # Person 9 starts speaking: their camera (not among the first six) reaches everyone
        # within a second, keyframe included, and their voice reaches the audio-only listener.
        speaker = people[9]
        assert all(speaker.id not in _cameras(got) for got in received)
        camera = (speaker.id, "camera")
        viewers = [p for p in people if p is not speaker and p is not listener]
        before = {p.name: len(p.counts.keyframes[camera]) for p in viewers}
        started = time.monotonic()
        tones[9].loud = True

        def first_keyframes() -> list[float]:
            return sorted(p.counts.keyframes[camera][before[p.name]] - started for p in viewers
                          if len(p.counts.keyframes[camera]) > before[p.name])

        while time.monotonic() < started + 5 and len(first_keyframes()) < len(viewers):
            await asyncio.sleep(0.02)
        delays = first_keyframes()
        print(f"the new speaker's first keyframe reached the viewers after {delays} s")
        assert len(delays) == len(viewers), f"only {len(delays)} of {len(viewers)} saw a keyframe"
        assert delays[-1] < 1.0, f"the new speaker's keyframe took {delays} s"
        for viewer in viewers:
            message = await viewer.wait_for("active-speaker",
                                            where=lambda m: m["participant"] == speaker.id)
            assert message["participant"] == speaker.id

        received = await _received_in(people, 2.0)
        for person, got in zip(people, received, strict=True):
            if person is listener:
                assert _cameras(got) == set()
            elif person is not speaker:
                assert speaker.id in _cameras(got)
                assert len(_cameras(got)) == LAST_N, f"{person.name} received {got}"
            if person is not speaker:
                assert got.get((speaker.id, "microphone"), 0) > 25, "the speaker is heard"
                assert {s for (s, source) in got if source == "microphone"} == {speaker.id}
    finally:
        for person in people:
            await person.close()
