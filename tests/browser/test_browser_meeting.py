"""A meeting in real Chromium pages: video, chat, host controls, listeners, reconnection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytestmark = pytest.mark.browser


async def join(page: Any, url: str, name: str) -> str:
    """Open an invite link, join under ``name``; returns this participant's id."""
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#join")
    await page.wait_for_function(
        "window.townhall && window.townhall.status === 'connected' && window.townhall.self"
    )
    return str(await page.evaluate("window.townhall.self.id"))


DESCRIBE = """async () => {
    const t = window.townhall;
    if (!t) return 'no connection';
    const stats = async (pc) => {
        if (!pc) return null;
        const out = [];
        (await pc.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp') out.push(`in ${s.kind} ${s.packetsReceived}p`);
            if (s.type === 'outbound-rtp') out.push(`out ${s.kind} ${s.packetsSent}p`);
        });
        return `${pc.connectionState} ${out.join(', ')}`;
    };
    return JSON.stringify({
        status: t.status, self: t.self && t.self.id,
        consumers: [...t.consumers.values()],
        publish: await stats(t.publishTransport), subscribe: await stats(t.subscribeTransport),
        videos: [...document.querySelectorAll('video')].map((v) =>
            `${v.dataset.participant}/${v.dataset.source} ${v.videoWidth}px t=${v.currentTime}`),
    });
}"""


async def describe(page: Any) -> str:
    """The connection state of a page, for failure messages."""
    try:
        return str(await page.evaluate(DESCRIBE))
    except Exception as exc:
        return f"(cannot describe the page: {exc})"


async def assert_video_playing(page: Any, participant: str, source: str = "camera") -> None:
    """The remote video of ``participant`` has frames and its playback time advances."""
    selector = f'video[data-remote][data-participant="{participant}"][data-source="{source}"]'
    try:
        await page.wait_for_function(
            """(selector) => {
                const v = document.querySelector(selector);
                return v && v.videoWidth > 0 && v.readyState >= 2;
            }""",
            arg=selector,
            timeout=20_000,
        )
    except Exception as exc:
        raise AssertionError(f"no video of {participant}: {await describe(page)}") from exc
    before = await page.eval_on_selector(selector, "v => v.currentTime")
    await page.wait_for_timeout(1000)
    after = await page.eval_on_selector(selector, "v => v.currentTime")
    assert after > before + 0.3, f"video of {participant} is stuck at {before} -> {after}"


async def participant_ids(page: Any) -> list[str]:
    return list(
        await page.eval_on_selector_all(
            "#participants li[data-participant]", "items => items.map(li => li.dataset.participant)"
        )
    )


async def test_two_pages_joined_from_invite_links_each_see_the_other_playing(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("see each other")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    bob_id = await join(bob, await server.invite(room, "speaker"), "Bob")

    await assert_video_playing(alice, bob_id)
    await assert_video_playing(bob, alice_id)
    assert await alice.text_content(f'figure[data-participant="{bob_id}"] figcaption') == "Bob"
    assert bob_id in await participant_ids(alice)
    assert await bob.locator(f'audio[data-participant="{alice_id}"]').count() == 1


async def test_a_chat_message_sent_on_one_page_appears_on_the_other(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("chat")
    alice, bob = await new_page(), await new_page()
    await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "listener"), "Bob")

    await alice.fill("#chat-input", "Привіт, the agenda is in the doc <b>now</b>")
    await alice.press("#chat-input", "Enter")

    message = bob.locator("#chat-log .chat-message").last
    await message.wait_for()
    assert await message.locator(".chat-name").text_content() == "Alice"
    assert (
        await message.locator(".chat-text").text_content()
        == "Привіт, the agenda is in the doc <b>now</b>"
    )
    assert await bob.locator("#chat-log b").count() == 0, "chat text must not become markup"
    assert await alice.input_value("#chat-input") == ""


async def test_a_host_mutes_a_participant_who_sees_the_notice_and_whose_microphone_is_off(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("mute")
    host, speaker = await new_page(), await new_page()
    await join(host, await server.invite(room, "host"), "Host")
    speaker_id = await join(speaker, await server.invite(room, "speaker"), "Speaker")
    await speaker.wait_for_function(
        "window.townhall.isEnabled('microphone')"
        " && window.townhall.local.get('microphone').announced"
    )
    assert await speaker.get_attribute("#mic-toggle", "aria-pressed") == "true"
    assert await speaker.locator('button[data-action="mute"]').count() == 0

    await host.click(
        f'#participants li[data-participant="{speaker_id}"] button[data-action="mute"]'
    )

    await speaker.locator("#notices", has_text="You were muted by the host").wait_for()
    assert await speaker.evaluate("window.townhall.local.get('microphone').track.enabled") is False
    assert (
        await speaker.evaluate("window.townhall.local.get('microphone').transceiver.sender.track")
        is None
    )
    assert await speaker.get_attribute("#mic-toggle", "aria-pressed") == "false"


async def test_a_listener_cannot_publish_sees_the_speaker_video_and_has_no_tile(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("listen")
    speaker, listener = await new_page(), await new_page()
    speaker_id = await join(speaker, await server.invite(room, "speaker"), "Speaker")
    listener_id = await join(listener, await server.invite(room, "listener"), "Listener")

    await assert_video_playing(listener, speaker_id)
    assert await listener.evaluate("window.townhall.publishTransport") is None
    assert await listener.evaluate("window.townhall.local.size") == 0
    sent = await listener.evaluate(
        """async () => {
            const pc = window.townhall.subscribeTransport;
            const stats = await pc.getStats();
            let n = 0;
            stats.forEach((s) => { if (s.type === 'outbound-rtp') n += 1; });
            return n + pc.getSenders().filter((s) => s.track).length;
        }"""
    )
    assert sent == 0
    assert await listener.is_hidden("#mic-toggle")
    assert (
        await listener.locator(f'video[data-remote][data-participant="{listener_id}"]').count() == 0
    )
    # The speaker receives nothing from the listener.
    assert await speaker.locator(f'video[data-participant="{listener_id}"][data-mid]').count() == 0
    # A listener has no picture, so no tile on either page (on a phone, an empty tile of their
    # own would be the first thing a listener sees); they are in the participants list.
    own = f'figure[data-participant="{listener_id}"]'
    assert await listener.locator(own).count() == 0
    assert await speaker.locator(own).count() == 0
    await speaker.locator(f'li.participant[data-participant="{listener_id}"]').wait_for()
    assert await listener.locator(f'figure[data-participant="{speaker_id}"]').count() == 1


async def test_a_page_reconnects_by_itself_after_its_socket_closes_abnormally(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("reconnect")
    alice, bob = await new_page(), await new_page()
    # Bob's WebSocket goes through Playwright, which can cut it the way a network does: the page
    # sees an abnormal close it did not ask for, and the server sees the connection go.
    sockets: list[tuple[Any, Any]] = []

    def route(ws: Any) -> None:
        sockets.append((ws, ws.connect_to_server()))

    await bob.route_web_socket("**/ws", route)
    await join(alice, await server.invite(room, "speaker"), "Alice")
    bob_id = await join(bob, await server.invite(room, "speaker"), "Bob")
    await assert_video_playing(alice, bob_id)
    assert len(sockets) == 1

    page_side, server_side = sockets[0]
    await server_side.close(code=1001, reason="gone")
    await page_side.close(code=4000, reason="network went away")

    await bob.wait_for_function(
        "document.querySelector('#connection-status').textContent === 'Reconnecting…'",
        timeout=5_000,
    )
    await bob.wait_for_function("window.townhall.status === 'connected'", timeout=15_000)
    assert len(sockets) >= 2
    bob_id_after = await bob.evaluate("window.townhall.self.id")
    await alice.wait_for_function(
        """(id) => document.querySelector(`#participants li[data-participant="${id}"]`)""",
        arg=bob_id_after,
    )
    await assert_video_playing(alice, bob_id_after)
    await assert_video_playing(bob, await alice.evaluate("window.townhall.self.id"))


async def test_a_shared_screen_appears_as_its_own_tile_on_the_other_page_and_can_be_shared_again(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("screen")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "speaker"), "Bob")
    await assert_video_playing(bob, alice_id)

    await alice.click("#screen-toggle")
    await alice.locator('#screen-toggle[aria-pressed="true"]').wait_for()
    assert await alice.evaluate("window.townhall.isEnabled('screen')")

    await assert_video_playing(bob, alice_id, "screen")
    await assert_video_playing(bob, alice_id, "camera")
    caption = bob.locator(f'figure[data-participant="{alice_id}"][data-source="screen"] figcaption')
    assert await caption.text_content() == "Alice: screen"
    # The screen takes the whole width of the video area, above the cameras (text on it is to
    # be read); Alice's own page shows it as one tile among the others.
    tiles = await bob.locator(".tiles").bounding_box()
    screen = await bob.locator(f'figure[data-participant="{alice_id}"][data-source="screen"]') \
        .bounding_box()
    camera = await bob.locator(f'figure[data-participant="{alice_id}"][data-source="camera"]') \
        .bounding_box()
    assert screen["width"] >= tiles["width"] - 1, (screen, tiles)
    assert screen["y"] + screen["height"] <= camera["y"], (screen, camera)
    own = await alice.locator('figure[data-source="screen"]').bounding_box()
    assert own["width"] < (await alice.locator(".tiles").bounding_box())["width"] / 2 + 1

    await alice.click("#screen-toggle")
    await bob.locator(f'video[data-participant="{alice_id}"][data-source="screen"]').wait_for(
        state="detached"
    )

    # The offer that ends the share keeps its section, rejected; the answer must reject it too
    # (see sfu/rejected_sdp.py), or the page's publishing connection takes no new offer.
    await alice.wait_for_function("window.townhall.publishTransport.signalingState === 'stable'")
    await alice.click("#screen-toggle")
    await alice.locator('#screen-toggle[aria-pressed="true"]').wait_for()
    await assert_video_playing(bob, alice_id, "screen")
    await assert_video_playing(bob, alice_id, "camera")


ROUND_TRIPS = """async () => {
    const out = [];
    (await window.townhall.publishTransport.getStats()).forEach((s) => {
        if (s.type === 'remote-inbound-rtp' && s.roundTripTimeMeasurements > 0)
            out.push([s.kind, s.roundTripTime]);
    });
    return out;
}"""


async def test_a_publishing_page_measures_its_round_trip_from_the_servers_reports(
    server: Any, new_page: Any
) -> None:
    """The receiver reports give the delay since each sender report (DLSR): without it the
    page counted the wait for the server's next report, up to a second, as round trip."""
    room = await server.create_room("round trip")
    alice, bob = await new_page(), await new_page()
    alice_id = await join(alice, await server.invite(room, "speaker"), "Alice")
    await join(bob, await server.invite(room, "speaker"), "Bob")
    await assert_video_playing(bob, alice_id)
    deadline = time.monotonic() + 15
    while len(measured := await alice.evaluate(ROUND_TRIPS)) < 2:  # the audio and a layer
        assert time.monotonic() < deadline, f"no round trip measured: {measured}"
        await asyncio.sleep(0.5)
    assert all(rtt < 0.1 for _, rtt in measured), f"round trips over loopback: {measured}"
