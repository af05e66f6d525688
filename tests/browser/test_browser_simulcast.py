"""Simulcast in real Chromium: a page publishes three layers, another receives the one its
video's size needs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_browser_meeting import assert_video_playing, describe, join

from support import Attendee, PatternTrack, until
from townhall.sfu import bandwidth, native, simulcast, twcc

pytestmark = pytest.mark.browser

FRAME_WIDTH = """() => new Promise((resolve) => {
    const pc = window.townhall && window.townhall.subscribeTransport;
    if (!pc) return resolve(0);
    pc.getStats().then((stats) => {
        let width = 0;
        stats.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'video' && s.frameWidth)
                width = s.frameWidth;
        });
        resolve(width);
    });
})"""


async def show_remote_video_at(page: Any, width: int, height: int) -> None:
    await page.evaluate(
        """([w, h]) => {
            let style = document.getElementById('test-size');
            if (!style) {
                style = document.createElement('style');
                style.id = 'test-size';
                document.head.append(style);
            }
            style.textContent = `video[data-remote] {width: ${w}px !important;
                height: ${h}px !important}`;
        }""",
        [width, height],
    )


async def wait_value(page: Any, script: str, wanted: Any, timeout: float) -> tuple[float, Any]:
    """Evaluate ``script`` every 0.25 s until it gives ``wanted``: (seconds it took, None), or
    (-1, the last value) after ``timeout`` seconds."""
    start = time.monotonic()
    seen = None
    while time.monotonic() - start < timeout:
        seen = await page.evaluate(script)
        if seen == wanted:
            return time.monotonic() - start, None
        await asyncio.sleep(0.25)
    return -1.0, seen


async def wait_frame_width(page: Any, width: int, timeout: float = 20) -> float:
    took, seen = await wait_value(page, FRAME_WIDTH, width, timeout)
    if took < 0:
        raise AssertionError(f"received frameWidth {seen}, not {width}: {await describe(page)}")
    return took


async def test_a_page_publishes_three_layers_and_another_receives_the_size_it_shows(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("simulcast")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "listener"), "Bob")
    await show_remote_video_at(bob, 1200, 675)
    await assert_video_playing(bob, alice_id)

    live = server.running.services.registry.find(room)
    producer = next(p for p in live.router.producers.values()
                    if p.owner == alice_id and p.source == "camera")
    assert [layer.rid for layer in producer.layers] == ["q", "h", "f"]
    deadline = time.monotonic() + 30
    while not all(layer.ssrc is not None and layer.bitrate > 0 and layer.width
                  for layer in producer.layers):
        assert time.monotonic() < deadline, f"layers seen by the server: {producer.layers}"
        await asyncio.sleep(0.5)
    widths = [layer.width for layer in producer.layers]
    assert widths == [320, 640, 1280], widths

    await wait_frame_width(bob, 1280)
    await show_remote_video_at(bob, 300, 169)
    await wait_frame_width(bob, 320)

    # Chromium accepts transport-wide congestion control: the SFU's estimate comes from its
    # feedback and starts at the throughput it sees, here the small layer's. Enlarged, the
    # video needs more, so the SFU probes until the estimate has room for the middle layer.
    bob_id = await bob.evaluate("window.townhall.self.id")
    estimate = live.router.estimate(live.participants[bob_id].subscribe_transport)
    assert estimate.source == "transport-cc"
    deadline = time.monotonic() + 20
    while estimate.reports < 10:
        assert time.monotonic() < deadline, "no transport feedback from Chromium"
        await asyncio.sleep(0.5)
    await show_remote_video_at(bob, 600, 338)
    took = await wait_frame_width(bob, 640, timeout=10)
    print(f"middle layer after {took:.1f} s; estimate {estimate.value()} bit/s, "
          f"layers {[layer.bitrate for layer in producer.layers]}")
    await asyncio.sleep(3)
    await wait_frame_width(bob, 640, timeout=1)
    assert estimate.value() * bandwidth.KEEP_TOLERANCE > producer.layers[1].bitrate
    await assert_video_playing(bob, alice_id)


CLIENT_SIZE = """(selector) => {
    const video = document.querySelector(selector);
    return [video.clientWidth, video.clientHeight];
}"""

SHOWN_AT = """(selector) => {
    const rect = document.querySelector(selector).getBoundingClientRect();
    return [Math.round(rect.width), Math.round(rect.bottom), window.innerHeight];
}"""


async def test_on_a_wide_window_one_other_video_is_large_at_the_top_layer_and_smaller_among_four(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("two")
    alice, bob = await new_page(), await new_page()
    await bob.set_viewport_size({"width": 1920, "height": 1080})
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    bob_id = await join(bob, await server.invite(room, "speaker"), "Bob")
    joined = time.monotonic()
    await assert_video_playing(bob, alice_id)

    # Two tiles share the row (not seven columns' worth of room, most of it empty), and the
    # page fits in the window.
    width, bottom, height = await bob.evaluate(
        SHOWN_AT, f'video[data-remote][data-participant="{alice_id}"]')
    assert width >= 700, f"Alice's video shown {width} px wide"
    assert bottom <= height, f"Alice's video ends at {bottom} px in a window {height} px high"
    # The page tells the server that size: the server sends the top layer once the estimate
    # (from Chromium's transport feedback, starting at the small layer's throughput) has
    # grown by probing. Its first estimate holds nothing back (when it held the layers for
    # 3 s, the top layer came 5.5 s after joining here).
    await wait_frame_width(bob, 1280, timeout=20)
    print(f"top layer {time.monotonic() - joined:.1f} s after joining")
    await assert_video_playing(bob, alice_id)

    # Two more people publish: four tiles share the row, and Alice's video, now shown about a
    # quarter as wide, gets the layer that size needs, not the top one.
    live = server.running.services.registry.find(room)
    consumer = next(c for c in live.participants[bob_id].consumers.values()
                    if c.producer.owner == alice_id and c.producer.source == "camera")
    assert consumer.max_layer == 2 and consumer.layer == 2
    people = [Attendee(server.ws_url, server.token(room, "speaker"), name, count_only=True)
              for name in ("Carol", "Dave")]
    try:
        for person in people:
            await person.join()
            await person.publish(audio=False, pattern=PatternTrack(160, 120, 10))
        await bob.wait_for_selector(f'video[data-remote][data-participant="{people[1].id}"]')
        joined = time.monotonic()
        width, height = await bob.evaluate(
            CLIENT_SIZE, f'video[data-remote][data-participant="{alice_id}"]')
        assert 320 < width < 640, f"Alice's video shown {width} px wide among four"
        wanted = simulcast.layer_for_size(consumer.producer.layers, width, height)
        assert wanted < 2
        await until(lambda: consumer.max_layer == wanted and consumer.layer == wanted, 10,
                    f"Alice's video shown at {width}x{height} on layer {consumer.layer} (at "
                    f"most {consumer.max_layer}), not {wanted}")
        print(f"among four tiles {width} px wide: layer {wanted} "
              f"{time.monotonic() - joined:.1f} s after the fourth tile came")
        await assert_video_playing(bob, alice_id)
    finally:
        for person in people:
            await person.close()


CAMERA_ENCODINGS_ACTIVE = """() => {
    const local = window.townhall.local.get('camera');
    return local.transceiver.sender.getParameters().encodings.map((e) => e.active);
}"""

LAYERS_SENT = """() => new Promise((resolve) => {
    window.townhall.publishTransport.getStats().then((stats) => {
        const sent = {};
        stats.forEach((s) => {
            if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid)
                sent[s.rid] = s.packetsSent;
        });
        resolve(sent);
    });
})"""


async def wait_encodings(page: Any, active: list[bool], timeout: float) -> float:
    took, seen = await wait_value(page, CAMERA_ENCODINGS_ACTIVE, active, timeout)
    if took < 0:
        raise AssertionError(f"the camera's encodings are active {seen}, not {active}")
    return took


async def test_layers_nobody_watches_stop_at_the_camera_and_start_again_when_watched(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("sent-layers")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "listener"), "Bob")
    await show_remote_video_at(bob, 300, 169)
    await assert_video_playing(bob, alice_id)
    await wait_frame_width(bob, 320)

    # Bob shows Alice small: after the idle time her page stops encoding the two larger layers.
    took = await wait_encodings(alice, [True, False, False], timeout=simulcast.LAYER_IDLE + 10)
    print(f"larger layers switched off {took:.1f} s after the small layer was shown")
    before = await alice.evaluate(LAYERS_SENT)
    await asyncio.sleep(2)
    after = await alice.evaluate(LAYERS_SENT)
    assert after["q"] > before["q"], (before, after)
    assert (after["h"], after["f"]) == (before["h"], before["f"]), (before, after)
    await assert_video_playing(bob, alice_id)

    # Bob enlarges it: the layers come back and he gets the full size.
    await show_remote_video_at(bob, 1200, 675)
    await wait_encodings(alice, [True, True, True], timeout=5)
    took = await wait_frame_width(bob, 1280, timeout=20)
    print(f"full size {took:.1f} s after the video was enlarged")


WHEP_PLAY = """async ([url, token]) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('audio', {direction: 'recvonly'});
    pc.addTransceiver('video', {direction: 'recvonly'});
    await pc.setLocalDescription();
    await new Promise((resolve) => {
        const done = () => pc.iceGatheringState === 'complete' && resolve();
        pc.addEventListener('icegatheringstatechange', done);
        done();
    });
    const response = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
        headers: {'Content-Type': 'application/sdp', 'Authorization': `Bearer ${token}`}});
    const body = await response.text();
    if (response.status !== 201) return `${response.status} ${body}`;
    await pc.setRemoteDescription({type: 'answer', sdp: body});
    window.whep = pc;
    return 'playing';
}"""

WHEP_FRAME_WIDTH = FRAME_WIDTH.replace("window.townhall && window.townhall.subscribeTransport",
                                       "window.whep")


async def test_a_chromium_whep_player_sends_transport_feedback_and_gets_the_layer_it_carries(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("whep simulcast")
    alice, player = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    live = server.running.services.registry.find(room)
    deadline = time.monotonic() + 30
    while not any(p.owner == alice_id and p.source == "camera" and len(p.layers) == 3
                  and all(layer.bitrate > 0 for layer in p.layers)
                  for p in live.router.producers.values()):
        assert time.monotonic() < deadline, "Alice's three layers never reached the server"
        await asyncio.sleep(0.5)

    await player.goto(server.base_url)
    played = await player.evaluate(
        WHEP_PLAY, [f"{server.base_url}/whep/{room}/{alice_id}", server.token(room, "listener")])
    assert played == "playing", played
    viewer = next(p for p in live.participants.values() if p.name == "WHEP viewer")
    estimate = live.router.estimate(viewer.outbox.transport)
    assert estimate is not None and estimate.source == "transport-cc"
    deadline = time.monotonic() + 20
    while estimate.reports < 10:
        assert time.monotonic() < deadline, "no transport feedback from the WHEP player"
        await asyncio.sleep(0.5)
    # A WHEP player tells no size: it gets the largest layer its estimate carries, and on
    # loopback the estimate from its feedback grows with what the camera sends.
    start = time.monotonic()
    while (width := await player.evaluate(WHEP_FRAME_WIDTH)) < 1280:
        assert time.monotonic() - start < 30, \
            f"frameWidth {width} after 30 s; estimate {estimate.value()} bit/s"
        await asyncio.sleep(0.25)
    print(f"WHEP player at {width} px after {time.monotonic() - start:.1f} s; "
          f"estimate {estimate.value()} bit/s")
    producer = next(p for p in live.router.producers.values()
                    if p.owner == alice_id and p.source == "camera")
    assert estimate.value() * bandwidth.KEEP_TOLERANCE > producer.layers[2].bitrate


async def wait_top_layer(producer: Any, fits: Any, timeout: float, what: str) -> float:
    """Wait until ``fits(bit/s of the top layer)``; returns the seconds it took."""
    start = time.monotonic()
    while not fits(producer.layers[-1].bitrate):
        assert time.monotonic() - start < timeout, \
            f"the top layer at {producer.layers[-1].bitrate} bit/s, not {what}, after {timeout} s"
        await asyncio.sleep(0.25)
    return time.monotonic() - start


async def test_a_chromium_publisher_is_told_when_its_video_arrived_and_sends_by_it(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("publisher feedback")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "listener"), "Bob")
    await show_remote_video_at(bob, 1200, 675)  # watched: every layer stays on
    live = server.running.services.registry.find(room)
    deadline = time.monotonic() + 20
    while not any(p.owner == alice_id and p.source == "camera"
                  for p in live.router.producers.values()):
        assert time.monotonic() < deadline, "Alice's camera never reached the server"
        await asyncio.sleep(0.25)
    producer = next(p for p in live.router.producers.values()
                    if p.owner == alice_id and p.source == "camera")
    transport = producer.transport
    arrivals = live.router._transports[transport].arrivals
    assert arrivals.extension_id != 0
    loaded = native.load()
    path = transport._path
    if loaded is not None:
        assert path is not None and path.sockaddr, "Chromium's UDP read by the native reader"
        # the socket's native reader sends the feedback itself (and the router's tick does
        # not); once Chromium's sending has grown with it, the tick sends it again, so that
        # the test can withhold it
        sent_by_reader = loaded.read_counts()[2]
        count = arrivals.count
        await asyncio.sleep(1)
        assert arrivals.by_reader and loaded.read_counts()[2] >= sent_by_reader + 5
        assert arrivals.count >= count + 5
    # Chromium's estimate of its uplink grows with the feedback
    await wait_top_layer(producer, lambda b: b > 400_000, 30, "over 400 kbit/s")
    if loaded is not None:
        assert path is not None
        routes = path._protocol.socket.routes
        routes[path.sockaddr] = (*routes[path.sockaddr][:12], None)
    sent: list[bytes] = []
    withhold = False
    send_rtcp = transport.send_rtcp

    def keep(data: bytes) -> bool:
        if len(data) > 1 and data[1] == 205 and data[0] & 0x1F == 15:
            if withhold:
                return True
            sent.append(data)
        return bool(send_rtcp(data))

    transport.send_rtcp = keep
    await asyncio.sleep(2)
    before = producer.layers[-1].bitrate
    # Chromium's sending waits for the feedback: without it, it soon holds its video back.
    withhold = True
    dropped = await wait_top_layer(producer, lambda b: b < before / 2, 10,
                                   f"under half of {before}")
    withhold = False
    back = await wait_top_layer(producer, lambda b: b > before * 0.8, 15,
                                f"back over 80 % of {before}")
    print(f"top layer {before} bit/s; without feedback under half in {dropped:.1f} s, "
          f"back in {back:.1f} s with it")
    feedback = [twcc.parse_feedback(data) for data in sent]
    reported = sum(f.count for f in feedback)
    lost = sum(1 for f in feedback for _, arrival in f.packets if arrival is None)
    print(f"{len(feedback)} feedback packets about {reported} packets, {lost} reported lost")
    assert len(feedback) > 20 and lost <= reported / 100  # loopback loses nothing
