"""WHIP and WHEP over loopback: aiortc stands in for OBS (publishing) and for a WHEP player."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from av import VideoFrame

from support import Attendee, PatternTrack, RunningServer, ToneTrack
from townhall.sfu import twcc

SDP = "application/sdp"


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


class HttpMedia:
    """One WHIP or WHEP session driven from a test: an aiortc peer connection and its resource."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.session = aiohttp.ClientSession()
        self.location: str | None = None
        self.frames: Counter[str] = Counter()
        self.frame_sizes: dict[str, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._track)

    async def post(self, url: str, body: str | None = None,
                   content_type: str = SDP) -> aiohttp.ClientResponse:
        """POST the offer (or ``body``); on 201 apply the answer and remember the resource."""
        if body is None:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            body = self.pc.localDescription.sdp
        response = await self.session.post(
            url, data=body.encode(), headers={"Content-Type": content_type, **_auth(self.token)})
        await response.read()
        if response.status == 201:
            self.location = str(response.url.join(aiohttp.client.URL(
                response.headers["Location"])))
            await self.pc.setRemoteDescription(
                RTCSessionDescription(await response.text(), "answer"))
        return response

    async def delete(self) -> aiohttp.ClientResponse:
        assert self.location is not None
        response = await self.session.delete(self.location, headers=_auth(self.token))
        await response.read()
        return response

    def _track(self, track: Any) -> None:
        self._tasks.append(asyncio.ensure_future(self._pull(track)))

    async def _pull(self, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                self.frames[track.kind] += 1
                if isinstance(frame, VideoFrame):
                    self.frame_sizes[track.kind] = (frame.width, frame.height)

    async def wait_frames(self, kind: str, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.frames[kind] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.frames[kind]} of {count} {kind} frames within "
                                     f"{timeout} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        await self.session.close()


def publisher(token: str | None) -> HttpMedia:
    media = HttpMedia(token)
    media.pc.addTransceiver(ToneTrack(), direction="sendonly")
    media.pc.addTransceiver(PatternTrack(), direction="sendonly")
    return media


def viewer(token: str | None) -> HttpMedia:
    media = HttpMedia(token)
    media.pc.addTransceiver("audio", direction="recvonly")
    media.pc.addTransceiver("video", direction="recvonly")
    return media


async def _joined(server: RunningServer, room: str, role: str = "host",
                  name: str = "attendee") -> Attendee:
    attendee = Attendee(server.ws_url, server.token(room, role), name)
    await attendee.join()
    return attendee


async def test_whip_publisher_joins_the_meeting_and_attendees_decode_its_video_and_audio(
    server: RunningServer,
) -> None:
    room = await server.create_room("whip")
    attendee = await _joined(server, room)
    obs = publisher(server.token(room, "speaker"))
    try:
        response = await obs.post(f"{server.base_url}/whip/{room}?name=OBS")
        assert response.status == 201, await response.text()
        assert response.content_type == SDP
        assert response.headers["Location"].startswith(f"/whip/{room}/resource/")
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        joined = await attendee.wait_for(
            "participant-joined", where=lambda m: m["participant"]["name"] == "OBS")
        obs_id = joined["participant"]["id"]
        assert joined["participant"]["role"] == "speaker"
        await attendee.wait_frames((obs_id, "camera"), 30, timeout=10)
        await attendee.wait_frames((obs_id, "microphone"), 25, timeout=10)
        assert attendee.frame_sizes[(obs_id, "camera")] == (320, 240)

        deleted = await obs.delete()
        assert deleted.status == 200
        await attendee.wait_for("participant-left",
                                where=lambda m: m["participant"] == obs_id, timeout=5)
        again = await obs.delete()
        assert again.status == 404
        assert (await again.json())["error"]["code"] == "not-found"
    finally:
        await obs.close()
        await attendee.close()


async def test_whep_viewer_decodes_the_camera_and_microphone_of_the_participant_it_names(
    server: RunningServer,
) -> None:
    room = await server.create_room("whep")
    attendee = await _joined(server, room, "speaker")
    player = viewer(server.token(room, "listener"))
    try:
        await attendee.publish()
        response = await player.post(f"{server.base_url}/whep/{room}/{attendee.id}")
        assert response.status == 201, await response.text()
        assert response.headers["Location"].startswith(f"/whep/{room}/resource/")
        joined = await attendee.wait_for("participant-joined")
        assert joined["participant"]["name"] == "WHEP viewer"
        await player.wait_frames("video", 30)
        await player.wait_frames("audio", 25)
        assert player.frame_sizes["video"] == (320, 240)

        assert (await player.delete()).status == 200
        await attendee.wait_for("participant-left", timeout=5,
                                where=lambda m: m["participant"] == joined["participant"]["id"])
    finally:
        await player.close()
        await attendee.close()


async def test_a_whep_viewer_offering_transport_feedback_gets_it_on_video_and_still_decodes(
    server: RunningServer,
) -> None:
    room = await server.create_room("whep twcc")
    attendee = await _joined(server, room, "speaker")
    player = viewer(server.token(room, "listener"))
    try:
        await attendee.publish()
        await player.pc.setLocalDescription(await player.pc.createOffer())
        # aiortc does not offer the extension; a browser does (the browser test shows its
        # feedback reaching the estimate)
        offer = twcc.complete_offer(player.pc.localDescription.sdp, 7)
        response = await player.post(f"{server.base_url}/whep/{room}/{attendee.id}", offer)
        assert response.status == 201, await response.text()
        answer = player.pc.remoteDescription.sdp
        video = answer[answer.index("m=video"):]
        assert f"a=extmap:7 {twcc.URI}" in video
        assert f"a=rtcp-fb:{video.split()[3]} transport-cc" in video
        assert twcc.URI not in answer[:answer.index("m=video")]
        await player.wait_frames("video", 30)
        await player.wait_frames("audio", 25)

        live = server.running.services.registry.find(room)
        assert live is not None
        watching = next(p for p in live.participants.values() if p.name == "WHEP viewer")
        consumer = watching.outbox.consumers["video"]
        assert consumer.slot.twcc == 7
        assert consumer.twcc is not None
        numbered = [seq for _, _, seq in twcc._SENT.iter_unpack(consumer.twcc.history) if seq >= 0]
        assert len(numbered) > 30, "video went out without transport-wide sequence numbers"
        assert watching.outbox.consumers["audio"].twcc is None
    finally:
        await player.close()
        await attendee.close()


async def test_whep_of_the_room_switches_to_whoever_speaks_and_keeps_decoding(
    server: RunningServer,
) -> None:
    room = await server.create_room("speaker")
    silent = await _joined(server, room, "speaker", "silent")
    talker = await _joined(server, room, "speaker", "talker")
    player = viewer(server.token(room, "listener"))
    try:
        await silent.publish(audio=False)
        response = await player.post(f"{server.base_url}/whep/{room}")
        assert response.status == 201, await response.text()
        await player.wait_frames("video", 30)
        assert player.frames["audio"] == 0, "the only camera has no microphone"

        await talker.publish()
        await talker.wait_for("speaking", where=lambda m: talker.id in m["participants"])
        await player.wait_frames("audio", 25)
        shown = player.frames["video"]
        await player.wait_frames("video", shown + 30)
    finally:
        await player.close()
        await talker.close()
        await silent.close()


async def test_whep_ends_when_the_participant_shown_leaves(server: RunningServer) -> None:
    room = await server.create_room("leaving")
    shown = await _joined(server, room, "speaker", "shown")
    other = await _joined(server, room, "host", "other")
    player = viewer(server.token(room, "listener"))
    try:
        await shown.publish()
        response = await player.post(f"{server.base_url}/whep/{room}/{shown.id}")
        assert response.status == 201
        joined = await other.wait_for("participant-joined",
                                      where=lambda m: m["participant"]["name"] == "WHEP viewer")
        await shown.send({"type": "leave"})
        await other.wait_for("participant-left", timeout=5,
                             where=lambda m: m["participant"] == joined["participant"]["id"])
        assert (await player.delete()).status == 404
    finally:
        await player.close()
        await shown.close()
        await other.close()


async def _post(server: RunningServer, path: str, token: str | None, body: str = "",
                content_type: str = SDP) -> tuple[aiohttp.ClientResponse, Any]:
    media = viewer(token) if path.startswith("/whep") else publisher(token)
    try:
        response = await media.post(f"{server.base_url}{path}", body or None, content_type)
        payload = await response.json() if response.content_type == "application/json" \
            else None
        return response, payload
    finally:
        await media.close()


async def test_whip_without_a_token_is_401_with_a_bearer_challenge(server: RunningServer) -> None:
    room = await server.create_room("auth")
    response, payload = await _post(server, f"/whip/{room}", None)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert payload["error"]["code"] == "unauthorized"


async def test_whip_with_a_forged_token_is_401(server: RunningServer) -> None:
    room = await server.create_room("forged")
    token = server.token(room, "speaker")
    response, payload = await _post(server, f"/whip/{room}", token[:-2] + "AA")
    assert response.status == 401
    assert payload["error"]["message"] == "token signature invalid"


async def test_whip_with_a_listener_token_is_403_and_nobody_joins(server: RunningServer) -> None:
    room = await server.create_room("listeners")
    response, payload = await _post(server, f"/whip/{room}", server.token(room, "listener"))
    assert response.status == 403
    assert payload["error"]["code"] == "forbidden"
    assert server.running.services.registry.find(room) is None


async def test_whip_with_a_token_for_another_room_is_403(server: RunningServer) -> None:
    room = await server.create_room("mine")
    other = await server.create_room("theirs")
    response, _ = await _post(server, f"/whip/{other}", server.token(room, "host"))
    assert response.status == 403


async def test_whip_and_whep_for_an_unknown_room_are_404(server: RunningServer) -> None:
    for path in ("/whip/nosuchroom", "/whep/nosuchroom", "/whep/nosuchroom/someone"):
        response, payload = await _post(server, path, server.token("nosuchroom", "host"))
        assert response.status == 404, path
        assert payload["error"]["code"] == "not-found"


async def test_whep_of_an_unknown_participant_is_404(server: RunningServer) -> None:
    room = await server.create_room("nobody")
    attendee = await _joined(server, room)
    try:
        response, payload = await _post(server, f"/whep/{room}/nosuchperson",
                                        server.token(room, "listener"))
        assert response.status == 404
        assert payload["error"]["message"] == "unknown participant"
    finally:
        await attendee.close()


async def test_whip_with_garbage_sdp_is_400_and_nobody_joins(server: RunningServer) -> None:
    room = await server.create_room("garbage")
    token = server.token(room, "speaker")
    for body in ("hello", "v=0\r\nthis is not sdp\r\n", "v=0\r\nm=audio 9\r\n"):
        response, payload = await _post(server, f"/whip/{room}", token, body)
        assert response.status == 400, body
        assert payload["error"]["code"] == "bad-request"
    assert server.running.services.registry.find(room) is None


async def test_whip_with_a_json_body_is_415(server: RunningServer) -> None:
    room = await server.create_room("json")
    response, payload = await _post(server, f"/whip/{room}", server.token(room, "speaker"),
                                    '{"sdp": "v=0"}', "application/json")
    assert response.status == 415
    assert payload["error"]["code"] == "unsupported-media-type"


async def test_trickle_patch_is_405_and_options_allow_cross_origin_players(
    server: RunningServer,
) -> None:
    room = await server.create_room("cors")
    token = server.token(room, "speaker")
    async with aiohttp.ClientSession() as session:
        async with session.patch(f"{server.base_url}/whip/{room}/resource/x", data=b"a=x",
                                 headers={"Content-Type": "application/trickle-ice-sdpfrag",
                                          **_auth(token)}) as response:
            assert response.status == 405
            assert "PATCH" not in response.headers["Allow"]
        async with session.options(f"{server.base_url}/whip/{room}", headers={
                "Origin": "https://player.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"}) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
            assert "Location" in response.headers["Access-Control-Expose-Headers"]


async def test_whep_with_an_offer_that_only_sends_is_400_and_nobody_joins(
    server: RunningServer,
) -> None:
    room = await server.create_room("sendonly")
    media = publisher(server.token(room, "listener"))
    try:
        response = await media.post(f"{server.base_url}/whep/{room}")
        payload = await response.json()
    finally:
        await media.close()
    assert response.status == 400
    assert payload["error"]["message"] == "the offer receives no audio or video"
    assert server.running.services.registry.find(room) is None
