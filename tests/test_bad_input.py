"""Bad input gets a clear error and disturbs nobody else in the meeting."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from support import Attendee, RunningServer
from townhall.auth import tokens
from townhall.server import session


@pytest.fixture
async def meeting(server: RunningServer) -> AsyncIterator[tuple[str, Attendee, Attendee]]:
    """A room where a host and a speaker exchange media while a test misbehaves."""
    room = await server.create_room("bad input")
    host = Attendee(server.ws_url, server.token(room, "host"), "host")
    speaker = Attendee(server.ws_url, server.token(room, "speaker"), "speaker")
    await host.join()
    await speaker.join()
    await speaker.publish(audio=False)
    await host.wait_frames((speaker.id, "camera"), 10)
    try:
        yield room, host, speaker
    finally:
        await host.close()
        await speaker.close()


async def still_flowing(host: Attendee, speaker: Attendee) -> None:
    key = (speaker.id, "camera")
    before = host.frames[key]
    await host.wait_frames(key, before + 15, timeout=5)


async def _socket(server: RunningServer) -> tuple[aiohttp.ClientSession,
                                                  aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    return http, await http.ws_connect(server.ws_url, max_msg_size=0)


async def _closed_with(server: RunningServer, *messages: Any) -> tuple[int | None, str]:
    http, ws = await _socket(server)
    try:
        for message in messages:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_json(message)
        reply = await ws.receive(timeout=5)
        while reply.type == aiohttp.WSMsgType.TEXT:
            reply = await ws.receive(timeout=5)
        return ws.close_code, str(reply.extra or "")
    finally:
        await http.close()


async def test_a_message_that_is_not_json_closes_only_that_session(
    server: RunningServer, meeting: tuple[str, Attendee, Attendee]
) -> None:
    _room, host, speaker = meeting
    assert await _closed_with(server, "{not json") == (4400, "bad request: message is not JSON")
    await still_flowing(host, speaker)


async def test_the_first_message_must_be_join(server: RunningServer) -> None:
    assert await _closed_with(server, {"type": "chat", "text": "hi"}) == (
        4400, "bad request: the first message must be join")


async def test_a_forged_token_is_refused(server: RunningServer,
                                         meeting: tuple[str, Attendee, Attendee]) -> None:
    room, host, speaker = meeting
    forged = tokens.sign(b"another server's secret", room, "host", 3600, time.time())
    assert await _closed_with(server, {"type": "join", "token": forged, "name": "x"}) == (
        4401, "unauthorized: token signature invalid")
    await still_flowing(host, speaker)


async def test_an_expired_token_is_refused(server: RunningServer) -> None:
    room = await server.create_room("expired")
    old = tokens.sign(server.running.services.secret, room, "speaker", 60, time.time() - 120)
    assert await _closed_with(server, {"type": "join", "token": old, "name": "x"}) == (
        4401, "unauthorized: token expired")


async def test_a_token_for_an_unknown_room_is_refused(server: RunningServer) -> None:
    token = server.token("no-such-room", "speaker")
    code, reason = await _closed_with(server, {"type": "join", "token": token, "name": "x"})
    assert code == 4404 and reason.startswith("not found")


async def test_an_admin_token_cannot_join_a_meeting(server: RunningServer) -> None:
    code, reason = await _closed_with(
        server, {"type": "join", "token": server.admin_token, "name": "x"})
    assert (code, reason) == (4403, "forbidden: role 'admin' cannot join a meeting")


async def test_a_missing_join_times_out(server: RunningServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "JOIN_TIMEOUT", 0.3)
    http, ws = await _socket(server)
    try:
        await ws.receive(timeout=5)
        assert (ws.close_code, ) == (4408, )
    finally:
        await http.close()


async def test_an_oversized_message_closes_with_1009(
    server: RunningServer, meeting: tuple[str, Attendee, Attendee]
) -> None:
    _room, host, speaker = meeting
    limit = server.running.services.config.max_message_size
    code, _reason = await _closed_with(server, "x" * (limit + 1000))
    assert code == 1009
    await still_flowing(host, speaker)


async def test_unknown_messages_and_bad_fields_get_an_error_reply(
    meeting: tuple[str, Attendee, Attendee],
) -> None:
    _room, host, speaker = meeting
    await speaker.send({"type": "teleport"})
    error = await speaker.wait_for("error", where=lambda m: m["request"] == "teleport")
    assert error["code"] == "bad-request"
    assert error["message"] == "unknown message type: 'teleport'"
    await speaker.send({"type": "chat", "text": ""})
    error = await speaker.wait_for("error", where=lambda m: m["request"] == "chat")
    assert error["message"] == "text must be 1 to 4000 characters"
    await still_flowing(host, speaker)


@pytest.mark.parametrize(
    ("consumers", "message"),
    [
        ([], "consumers must be an object of at most 256 entries"),
        ({str(n): {"width": 1, "height": 1} for n in range(257)},
         "consumers must be an object of at most 256 entries"),
        ({"1": [640, 360]}, "each consumer needs {width, height}"),
        ({"1": {"width": -1, "height": 10}},
         "width and height must be whole numbers from 0 to 16384"),
        ({"1": {"width": 640.5, "height": 10}},
         "width and height must be whole numbers from 0 to 16384"),
        ({"1": {"width": True, "height": 10}},
         "width and height must be whole numbers from 0 to 16384"),
    ],
)
async def test_a_malformed_layout_hint_gets_an_error_and_the_meeting_goes_on(
    meeting: tuple[str, Attendee, Attendee], consumers: object, message: str,
) -> None:
    _room, host, speaker = meeting
    await host.send({"type": "layout", "consumers": consumers})
    error = await host.wait_for("error", where=lambda m: m["request"] == "layout")
    assert (error["code"], error["message"]) == ("bad-request", message)
    await host.send({"type": "layout", "consumers": {"no-such-mid": {"width": 0, "height": 0}}})
    await still_flowing(host, speaker)
    assert len([m for m in host.messages if m["type"] == "error"]) == 1


async def test_malformed_sdp_gets_an_error_and_the_meeting_goes_on(
    meeting: tuple[str, Attendee, Attendee],
) -> None:
    _room, host, speaker = meeting
    await host.send({"type": "publish", "sdp": "v=0\r\nthis is not sdp\r\n",
                     "tracks": [{"mid": "0", "source": "camera"}]})
    error = await host.wait_for("error", where=lambda m: m["request"] == "publish")
    assert error["code"] == "bad-request"
    assert error["message"].startswith(("malformed SDP", "cannot negotiate"))
    await still_flowing(host, speaker)


@pytest.mark.parametrize(
    ("message", "kind", "text"),
    [
        ({"type": "publish", "sdp": "v=0\r\n", "tracks": [], "restart": "yes"}, "publish",
         "restart must be true or false"),
        ({"type": "subscribe-answer", "sdp": "v=0\r\n", "connection": "2"}, "subscribe-answer",
         "connection must be a positive whole number"),
        ({"type": "subscribe-answer", "sdp": "v=0\r\n", "connection": 0}, "subscribe-answer",
         "connection must be a positive whole number"),
        ({"type": "subscribe-answer", "sdp": "v=0\r\n", "connection": True},
         "subscribe-answer", "connection must be a positive whole number"),
    ],
)
async def test_a_malformed_restart_or_connection_number_gets_an_error_and_the_meeting_goes_on(
    meeting: tuple[str, Attendee, Attendee], message: dict[str, object], kind: str,
    text: str,
) -> None:
    _room, host, speaker = meeting
    await host.send(message)
    error = await host.wait_for("error", where=lambda m: m["request"] == kind)
    assert (error["code"], error["message"]) == ("bad-request", text)
    await still_flowing(host, speaker)


async def test_a_request_id_comes_back_with_its_error_and_a_malformed_one_stops_the_request(
    meeting: tuple[str, Attendee, Attendee],
) -> None:
    _room, host, speaker = meeting
    await speaker.send({"type": "mute", "participant": host.id, "id": 41})
    error = await speaker.wait_for("error", where=lambda m: m["request"] == "mute")
    assert (error["code"], error["id"]) == ("forbidden", 41)
    for bad in ("7", -1, 2**53, True, 1.5):
        since = len(host.messages)
        await host.send({"type": "chat", "text": f"not sent {bad!r}", "id": bad})
        error = await host.wait_for("error", since=since, where=lambda m: m["request"] == "chat")
        assert (error["code"], error["message"]) == (
            "bad-request", "id must be a whole number from 0 to 9007199254740991")
        assert "id" not in error
    await host.send({"type": "chat", "text": "sent", "id": 2**53 - 1})
    await speaker.wait_for("chat", where=lambda m: m["text"] == "sent")
    assert not [m for m in speaker.messages if m["type"] == "chat" and m["text"] != "sent"]
    await still_flowing(host, speaker)


async def test_a_listener_cannot_publish_and_a_speaker_cannot_moderate(
    server: RunningServer, meeting: tuple[str, Attendee, Attendee]
) -> None:
    room, host, speaker = meeting
    listener = Attendee(server.ws_url, server.token(room, "listener"), "listener")
    await listener.join()
    try:
        await listener.send({"type": "publish", "sdp": "v=0\r\n", "tracks": []})
        error = await listener.wait_for("error", where=lambda m: m["request"] == "publish")
        assert error["code"] == "forbidden"
        await speaker.send({"type": "mute", "participant": host.id})
        error = await speaker.wait_for("error", where=lambda m: m["request"] == "mute")
        assert (error["code"], error["message"]) == ("forbidden", "only a host can do that")
        assert not host.joined["participant"]["muted_by_host"]
        await listener.wait_frames((speaker.id, "camera"), 10)
    finally:
        await listener.close()


async def test_malformed_rtp_and_rtcp_are_dropped_alone(
    server: RunningServer, meeting: tuple[str, Attendee, Attendee]
) -> None:
    _room, host, speaker = meeting
    counters = server.running.services.counters
    dropped = counters.packets_dropped
    assert speaker.publish_pc is not None
    dtls = speaker.publish_pc.getTransceivers()[0].sender.transport
    # padding longer than the packet, an SSRC nobody published, truncated RTCP
    bad_rtcp = b"\x81\xcd\x00\x09" + b"\x00" * 8  # NACK claiming 40 bytes, 12 present
    for n in range(5):  # each with its own sequence number, or SRTP replay protection drops it
        bad_rtp = struct.pack("!BBHII", 0xA0, 96, n, 2, 3) + b"\x00\x00\xff"
        unknown = struct.pack("!BBHII", 0x80, 96, n, 2, 0xDEAD) + b"\x00" * 20
        await dtls._send_rtp(bad_rtp)
        await dtls._send_rtp(unknown)
        await dtls._send_rtp(bad_rtcp)
    await asyncio.sleep(0.3)
    assert counters.packets_dropped >= dropped + 15
    await still_flowing(host, speaker)


async def test_http_api_refuses_bad_tokens_and_roles(server: RunningServer) -> None:
    room = await server.create_room("api")
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/rooms"
        async with http.post(url, json={"name": "x"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "unauthorized"
        speaker = {"Authorization": f"Bearer {server.token(room, 'speaker')}"}
        async with http.post(url, json={"name": "x"}, headers=speaker) as r:
            assert r.status == 403
        async with http.post(f"{url}/{room}/invites", json={"role": "host"},
                             headers=speaker) as r:
            assert r.status == 403
        host = {"Authorization": f"Bearer {server.token(room, 'host')}"}
        async with http.post(f"{url}/{room}/invites", json={"role": "wizard"},
                             headers=host) as r:
            assert r.status == 400
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        async with http.post(url, data=b"{", headers=admin) as r:
            assert r.status == 400
        async with http.get(f"{url}/nope", headers=admin) as r:
            assert r.status == 404
