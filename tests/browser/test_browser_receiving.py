"""Receiving preferences in real Chromium pages: audio-only mode, and RED audio from a browser."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from support import Attendee, PatternTrack, RunningServer, ToneTrack
from townhall.sfu import bandwidth
from townhall.sfu.router import Router

pytestmark = pytest.mark.browser

INBOUND_PACKETS = """async (kind) => {
    const pc = window.townhall.subscribeTransport;
    if (!pc) return 0;
    let packets = 0;
    (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === kind) packets += s.packetsReceived;
    });
    return packets;
}"""


async def join(page: Any, url: str, name: str) -> str:
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#join")
    await page.wait_for_function(
        "window.townhall && window.townhall.status === 'connected' && window.townhall.self"
    )
    return str(await page.evaluate("window.townhall.self.id"))


async def inbound(page: Any, kind: str) -> int:
    return int(await page.evaluate(INBOUND_PACKETS, kind))


async def growth(page: Any, kind: str, ms: int = 2000) -> int:
    before = await inbound(page, kind)
    await page.wait_for_timeout(ms)
    return await inbound(page, kind) - before


async def wait_packets(page: Any, kind: str, at_least: int, within: float) -> int:
    """Poll the page's count of ``kind`` packets every 0.2 s until it reaches ``at_least`` or
    ``within`` seconds pass; returns the last count. (``page.wait_for_function`` cannot do
    this: it takes the promise that ``getStats`` makes for a true value and returns at once.)"""
    deadline = time.monotonic() + within
    while (count := await inbound(page, kind)) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return count


async def keeps_receiving(page: Any, kind: str, packets: int, live: Any = None,
                          viewer: str = "", within: float = 5.0) -> None:
    """``packets`` more packets of ``kind`` reach ``page`` within ``within`` seconds; if not,
    the failure says how many did and, given the live room and the viewer's id, how the server
    forwards video to them. (A loaded machine slows the camera's frame rate: a window of fixed
    length would fail on that, not on video that stopped.)"""
    before = await inbound(page, kind)
    got = await wait_packets(page, kind, before + packets, within) - before
    assert got >= packets, \
        f"{got} of {packets} {kind} packets in {within} s; {forwarding(live, viewer)}"


def forwarding(live: Any, viewer: str) -> str:
    """How the server forwards to ``viewer``: each consumer's layer, target and pauses, and the
    estimate of their receiving transport."""
    if live is None or viewer not in live.participants:
        return "no server state"
    participant = live.participants[viewer]
    transport = participant.subscribe_transport
    estimate = live.router.estimate(transport) if transport is not None else None
    consumers = [f"{c.id} {c.producer.kind} layer {c.layer} target {c.target} "
                 f"paused {c.paused} packets {c.packets}"
                 for c in participant.consumers.values()]
    return (f"estimate {estimate.bitrate if estimate else None} bit/s, low bandwidth "
            f"{transport is not None and live.router.low_bandwidth(transport)}, "
            f"consumers: {'; '.join(consumers)}")


async def wait_receiving(page: Any, kind: str, within: float = 20.0) -> None:
    """The page has received more than 20 packets of ``kind`` (on its current connection)."""
    count = await wait_packets(page, kind, 21, within)
    assert count > 20, f"{count} {kind} packets after {within} s"


async def test_a_page_switched_to_audio_only_receives_no_video_packets_while_another_does(
    server: RunningServer, new_page: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What is under test is the switch, not the bandwidth estimate: on a loaded machine a
    # page's estimate can cut its video by itself (a CI run saw one fall to 0.85 times the
    # lowest layer's rate within a second of its video starting and keep it cut), so here no
    # estimate limits what the server forwards. The estimate's own cuts have their own tests.
    monkeypatch.setattr(bandwidth.Estimate, "value", lambda self, wanted=True: None)
    room = await server.create_room("audio only")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    bob_id = await join(bob, await server.invite(room, "speaker"), "Bob")
    live = server.running.services.registry.find(room)
    await wait_receiving(bob, "video")
    await wait_receiving(alice, "video")

    await bob.click("#audio-only-toggle")
    assert await bob.get_attribute("#audio-only-toggle", "aria-pressed") == "true"
    await bob.wait_for_function("window.townhall.forwarded && window.townhall.forwarded.size === 0")
    await bob.wait_for_timeout(500)  # packets already on the way
    assert await growth(bob, "video") == 0, "audio-only: not one video packet"
    await keeps_receiving(bob, "audio", 10)  # audio keeps coming
    await keeps_receiving(alice, "video", 20)  # the other page keeps receiving video
    paused = bob.locator(f'figure[data-participant="{alice_id}"] [data-testid="video-paused"]')
    assert await paused.is_visible()

    await bob.click("#audio-only-toggle")
    assert await bob.get_attribute("#audio-only-toggle", "aria-pressed") == "false"
    await bob.wait_for_function(
        "(id) => window.townhall.forwarded && window.townhall.forwarded.has(id)", arg=alice_id)
    await keeps_receiving(bob, "video", 20, live, bob_id)  # without renegotiation
    assert await paused.is_hidden()


async def test_red_audio_from_a_browser_reaches_a_browser_as_red_and_aiortc_as_opus(
    server: RunningServer, new_page: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload_types: Counter[int] = Counter()  # of the RTP packets the router received
    received = Router.rtp_received

    def counting(router: Router, transport: Any, data: bytes) -> None:
        payload_types[data[1] & 0x7F] += 1
        received(router, transport, data)

    monkeypatch.setattr(Router, "rtp_received", counting)
    # every packet through the router's Python path, where it is counted (not the socket's
    # native reader, which hands only what it cannot forward to rtp_received)
    monkeypatch.setattr(Router, "native_receive", lambda router, transport: None)
    room = await server.create_room("red")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "listener"), "Bob")
    plain = Attendee(server.ws_url, server.token(room, "listener"), "aiortc")
    await plain.join()
    try:
        await wait_receiving(bob, "audio")
        await plain.wait_frames((alice_id, "microphone"), 100)
        live = server.running.services.registry.find(room)
        assert live is not None
        microphone = live.participants[alice_id].producers["microphone"]
        assert microphone.red_payload_type is not None
        assert payload_types[microphone.red_payload_type] > 50, \
            "the browser sends RED once the answer puts it first"
        consumers = {p.name: p.consumers[microphone.id] for p in live.participants.values()
                     if microphone.id in p.consumers}
        assert consumers["Bob"].slot.red_payload_type is not None, "Chromium accepted RED"
        assert consumers["aiortc"].slot.red_payload_type is None
        await keeps_receiving(bob, "audio", 40)
    finally:
        await plain.close()


async def alice_and_bob(server: RunningServer, new_page: Any,
                        room_name: str) -> tuple[Any, Any, str, str, Any]:
    """Two speakers' pages in a new room, Bob receiving Alice's video; with their ids and the
    server's live room."""
    room = await server.create_room(room_name)
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    bob_id = await join(bob, await server.invite(room, "speaker"), "Bob")
    await wait_receiving(bob, "video")
    live = server.running.services.registry.find(room)
    assert live is not None
    return alice, bob, alice_id, bob_id, live


async def test_pages_connect_again_when_the_server_loses_their_media_connections(
    server: RunningServer, new_page: Any,
) -> None:
    alice, bob, alice_id, bob_id, live = await alice_and_bob(server, new_page, "lost connections")
    first_video = bob.locator(f'figure[data-participant="{alice_id}"] video')

    # Bob's receiving connection dies (what the server does when ICE gives up on it).
    lost = live.participants[bob_id].subscribe_transport
    assert lost is not None
    await lost.close()
    await bob.wait_for_function("window.townhall._subscribeConnection === 2")
    await wait_receiving(bob, "video")
    # Alice's video comes back on the new connection and keeps coming
    await keeps_receiving(bob, "video", 20, live, bob_id)
    assert await first_video.count() == 1, "one tile for Alice, not a stale one beside it"

    # Alice's publishing connection dies: her page publishes again on a new one.
    lost = live.participants[alice_id].publish_transport
    assert lost is not None
    await alice.evaluate("window.lostTransport = window.townhall.publishTransport")
    await lost.close()
    await alice.wait_for_function(
        "window.townhall.publishTransport && "
        "window.townhall.publishTransport !== window.lostTransport && "
        "window.townhall.publishTransport.connectionState === 'connected'")
    assert live.participants[alice_id].publish_transport is not lost
    await bob.wait_for_function(
        "(id) => window.townhall.forwarded && window.townhall.forwarded.has(id)", arg=alice_id)
    await keeps_receiving(bob, "video", 20, live, bob_id)  # Alice's new video
    await keeps_receiving(bob, "audio", 10, live, bob_id)  # and her audio
    assert await first_video.count() == 1


FAIL = """([transport, state]) => {
    const pc = window.townhall[transport];
    window.failedTransport = pc;
    Object.defineProperty(pc, 'connectionState', {get: () => state});
    pc.dispatchEvent(new Event('connectionstatechange'));
}"""


async def test_pages_replace_their_own_media_connections_when_these_fail_or_stay_disconnected(
    server: RunningServer, new_page: Any,
) -> None:
    alice, bob, alice_id, bob_id, live = await alice_and_bob(
        server, new_page, "page sees its connections fail")

    # Bob's receiving peer connection fails (as Chromium reports it when its path is gone):
    # the page asks for a new one, and the server offers everything on it.
    first = live.participants[bob_id].subscribe_transport
    await bob.evaluate(FAIL, ["subscribeTransport", "failed"])
    await bob.wait_for_function("window.townhall._subscribeConnection === 2")
    assert live.participants[bob_id].subscribe_transport is not first
    await wait_receiving(bob, "video")
    await keeps_receiving(bob, "video", 20, live, bob_id)  # Alice's video is back

    # Alice's publishing peer connection stays disconnected: after 5 s her page reports it,
    # and publishes again on a new one without waiting for the server to notice.
    lost = live.participants[alice_id].publish_transport
    await alice.evaluate(FAIL, ["publishTransport", "disconnected"])
    await alice.wait_for_timeout(3000)
    assert await alice.evaluate("window.townhall.publishTransport === window.failedTransport")
    await alice.wait_for_function(
        "window.townhall.publishTransport !== window.failedTransport && "
        "window.townhall.publishTransport.connectionState === 'connected'", timeout=10000)
    assert live.participants[alice_id].publish_transport is not lost
    await keeps_receiving(bob, "video", 20, live, bob_id)  # Alice's new video


#: What Chromium does when its tab goes to the background or another app comes to the front
#: (a headless page never is hidden by itself).
SET_HIDDEN = """(hidden) => {
    Object.defineProperty(document, 'visibilityState',
                          {value: hidden ? 'hidden' : 'visible', configurable: true});
    Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


async def test_a_hidden_page_receives_no_video_until_it_is_shown_again_and_audio_all_along(
    server: RunningServer, new_page: Any,
) -> None:
    alice, bob, alice_id, bob_id, live = await alice_and_bob(server, new_page, "hidden page")
    consumer = live.participants[bob_id].consumers[
        live.participants[alice_id].producers["camera"].id]

    await bob.evaluate(SET_HIDDEN, True)
    await bob.wait_for_timeout(1000)  # the layout message, and packets already on the way
    assert await growth(bob, "video") == 0, \
        f"hidden: not one video packet; {forwarding(live, bob_id)}"
    assert consumer.max_layer == -1
    await keeps_receiving(bob, "audio", 20, live, bob_id)
    await keeps_receiving(alice, "video", 20)  # the publisher is not held back for others

    shown = time.monotonic()
    await bob.evaluate(SET_HIDDEN, False)
    await keeps_receiving(bob, "video", 20, live, bob_id, within=5.0)
    print(f"video again {time.monotonic() - shown:.1f} s after the page was shown")


async def test_a_video_scrolled_out_of_the_window_is_not_sent_until_it_is_scrolled_back(
    server: RunningServer, new_page: Any,
) -> None:
    _alice, bob, alice_id, bob_id, live = await alice_and_bob(server, new_page, "scrolled away")
    # Far below the window, as the tiles of a large meeting are on a phone.
    await bob.add_style_tag(content=".tiles { margin-top: 3000px; }")
    await bob.wait_for_timeout(1500)  # the layout message, and packets already on the way
    assert await growth(bob, "video") == 0, \
        f"out of the window: not one video packet; {forwarding(live, bob_id)}"
    await keeps_receiving(bob, "audio", 20, live, bob_id)

    scrolled = time.monotonic()
    await bob.locator(f'video[data-remote][data-participant="{alice_id}"]') \
        .scroll_into_view_if_needed()
    await keeps_receiving(bob, "video", 20, live, bob_id, within=5.0)
    print(f"video again {time.monotonic() - scrolled:.1f} s after it was scrolled into view")


#: One tile under the other, each received video's two windows high: only the first of them is
#: in view, under one's own.
TALL_TILES = (".tiles { grid-template-columns: 1fr !important; } .tile:has(> video[data-remote]) "
              "{ aspect-ratio: auto; height: 1400px; max-height: none; }")


async def test_a_speaker_whose_camera_is_out_of_view_moves_to_the_front_and_is_seen(
    server: RunningServer, new_page: Any,
) -> None:
    """A large meeting on a small screen: the tiles below the window get no video. Whoever starts
    speaking down there moves to the front, into view, and their video comes."""
    room = await server.create_room("brought forward")
    people = [Attendee(server.ws_url, server.token(room, "speaker"), name, count_only=True)
              for name in ("Carol", "Dave")]
    tones = [ToneTrack(loud=False) for _ in people]
    try:
        for person, tone in zip(people, tones, strict=True):
            await person.join()
            await person.publish(audio_track=tone, pattern=PatternTrack(160, 120, 10))
        carol, dave = (person.id for person in people)
        bob = await new_page()
        bob_id = await join(bob, await server.invite(room, "listener"), "Bob")
        await bob.add_style_tag(content=TALL_TILES)
        live = server.running.services.registry.find(room)
        assert live is not None
        cameras = {c.producer.owner: c for c in live.participants[bob_id].consumers.values()
                   if c.producer.source == "camera"}

        def tops() -> Any:
            return bob.evaluate("""(ids) => ids.map((id) => document.querySelector(
                `figure[data-participant="${id}"][data-source="camera"]`)
                .getBoundingClientRect().top)""", [carol, dave])

        await keeps_receiving(bob, "video", 20, live, bob_id, within=20.0)
        await bob.wait_for_timeout(1500)  # the layout message, and packets already on the way
        before = cameras[dave].packets
        await bob.wait_for_timeout(2000)
        top_carol, top_dave = await tops()
        assert top_carol < 700 < top_dave, f"tiles at {top_carol} and {top_dave} px"
        assert cameras[dave].packets == before, \
            f"Dave's camera, out of view, is sent: {forwarding(live, bob_id)}"

        tones[1].loud = True
        spoke = time.monotonic()
        await bob.wait_for_function("(id) => window.townhall.activeSpeaker === id", arg=dave,
                                    timeout=10_000)
        top_carol, top_dave = await tops()
        assert top_dave < 700 < top_carol, \
            f"the new speaker's tile is not brought into view: tiles at {top_carol}, {top_dave} px"
        before = cameras[dave].packets
        deadline = time.monotonic() + 10
        while cameras[dave].packets < before + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert cameras[dave].packets >= before + 20, \
            f"Dave's camera, brought into view, is not sent: {forwarding(live, bob_id)}"
        print(f"the new speaker's video is sent {time.monotonic() - spoke:.1f} s after they "
              "started speaking")
    finally:
        for person in people:
            await person.close()
