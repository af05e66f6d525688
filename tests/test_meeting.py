"""Integration over loopback: aiortc participants meet through the real signalling."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support import Attendee, RunningServer, make_config, require_native_fanout, until
from townhall.auth import tokens
from townhall.server import app as server_app
from townhall.sfu import producer as producer_module
from townhall.sfu import router as router_module
from townhall.sfu import transport as transport_module


async def _attendees(server: RunningServer, room: str, roles: list[str]) -> list[Attendee]:
    people = []
    for n, role in enumerate(roles):
        attendee = Attendee(server.ws_url, server.token(room, role), f"person {n}")
        await attendee.join()
        people.append(attendee)
    return people


@pytest.mark.parametrize("fan_out", ["native", "python"])
async def test_three_participants_each_decode_the_others_audio_and_video(
    server: RunningServer, fan_out: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fan_out == "python":
        monkeypatch.setattr(producer_module, "fanout", None)
        monkeypatch.setattr(router_module, "receive", None)
    else:
        require_native_fanout()
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


async def test_a_receiver_gets_sender_reports_of_every_stream_stacked_in_one_rtcp_packet(
    server: RunningServer,
) -> None:
    from aiortc.rtp import RtcpPacket, RtcpSrPacket

    room = await server.create_room("reports")
    host, listener = await _attendees(server, room, ["host", "speaker"])
    try:
        await host.publish()
        await listener.wait_frames((host.id, "camera"), 10)
        await listener.wait_frames((host.id, "microphone"), 10)
        live = server.running.services.registry.find(room)
        assert live is not None
        consumers = list(live.participants[listener.id].consumers.values())
        transport = consumers[0].transport
        sent: list[bytes] = []
        original = transport.send_rtcp

        def recording(data: bytes) -> bool:
            sent.append(data)
            return original(data)

        transport.send_rtcp = recording  # type: ignore[method-assign]
        wanted = {c.slot.ssrc for c in consumers}

        def stacks() -> list[list[RtcpSrPacket]]:
            return [[q for q in RtcpPacket.parse(data) if isinstance(q, RtcpSrPacket)]
                    for data in sent]

        # Both streams' reports in one packet (the router reports every second; a stream
        # whose producer has not reported yet has no report to give, so a round may carry one).
        deadline = time.monotonic() + 8
        while not any({q.ssrc for q in stack} == wanted for stack in stacks()):
            assert time.monotonic() < deadline, stacks()
            await asyncio.sleep(0.2)
        assert all({q.ssrc for q in stack} <= wanted for stack in stacks())
        # aiortc read them: the far end knows what each stream sent (remote-outbound-rtp).
        stats = await listener.subscribe_pc.getStats()  # type: ignore[union-attr]
        remote = [s for s in stats.values() if s.type == "remote-outbound-rtp"]
        assert {s.kind for s in remote} == {"audio", "video"}
        assert all(s.packetsSent > 0 for s in remote)
    finally:
        await host.close()
        await listener.close()



async def test_a_publisher_gets_router_receiver_reports_and_no_idle_rtcp_timer_or_decoder_thread(
    server: RunningServer,
) -> None:
    room = await server.create_room("receiver-reports")
    (host,) = await _attendees(server, room, ["host"])
    try:
        await host.publish()
        live = server.running.services.registry.find(room)
        assert live is not None
        transport = live.participants[host.id].publish_transport
        assert transport is not None
        receivers = [t.receiver for t in transport.pc.getTransceivers()]
        assert len(receivers) == 2
        # aiortc's receivers see no packets (the router takes them first): their RTCP loop
        # would only wake every 0.5-1.5 s to find nothing to report.
        await until(lambda: all(getattr(r, "_RTCRtpReceiver__rtcp_task", None) is not None
                                for r in receivers), 10, "the receivers start")
        tasks = [r._RTCRtpReceiver__rtcp_task for r in receivers]  # type: ignore[attr-defined]
        assert [t.get_coro().__qualname__ for t in tasks] == ["_quiet_rtcp"] * 2
        # Nor do they keep a decoder thread waiting for frames that never come.
        threads = [r._RTCRtpReceiver__decoder_thread for r in receivers]  # type: ignore[attr-defined]
        await until(lambda: not any(t.is_alive() for t in threads), 5,
                    "the receivers' decoder threads end")
        # The publisher still learns how its streams arrive: the router reports every second.
        deadline = time.monotonic() + 8
        while True:
            stats = await host.publish_pc.getStats()  # type: ignore[union-attr]
            reported = {s.kind for s in stats.values() if s.type == "remote-inbound-rtp"}
            if reported == {"audio", "video"}:
                break
            assert time.monotonic() < deadline, reported
            await asyncio.sleep(0.2)
    finally:
        await host.close()


def _lossy(every: int) -> object:
    """A subscribe-side hook that loses every ``every``-th incoming RTP datagram on the wire,
    before SRTP (as a network would, so retransmissions are not taken for replays)."""

    def install(pc: object) -> None:
        ice = pc.getTransceivers()[0].receiver.transport.transport  # type: ignore[attr-defined]
        if getattr(ice, "_test_lossy", False):
            return
        original = ice._recv
        seen = itertools.count(1)

        async def lossy() -> bytes:
            while True:
                data: bytes = await original()
                is_rtp = 127 < data[0] < 192 and not 192 <= data[1] <= 223
                if not (is_rtp and next(seen) % every == 0):
                    return data

        ice._recv = lossy
        ice._test_lossy = True

    return install


async def test_with_five_percent_loss_nacks_keep_the_video_decoding(
    server: RunningServer,
) -> None:
    room = await server.create_room("lossy")
    sender, receiver = await _attendees(server, room, ["speaker", "listener"])
    receiver.rtp_filter = _lossy(20)
    try:
        await sender.publish(audio=False)
        key = (sender.id, "camera")
        await receiver.wait_frames(key, 15)
        start = receiver.frames[key]
        await asyncio.sleep(4)
        decoded = receiver.frames[key] - start
        assert decoded >= 0.8 * 4 * 30, f"only {decoded} frames in 4 s at 30 fps"
        assert server.running.services.counters.retransmissions > 0
        # the listener's reports on the sender reports gave its round trip (on loopback,
        # shorter than the fixed interval a resend waits at least)
        live = server.running.services.registry.find(room)
        assert live is not None and isinstance(live.router, router_module.Router)
        consumer = next(iter(live.participants[receiver.id].consumers.values()))
        trip = live.router.round_trip(consumer.transport)
        assert trip is not None and 0.0 <= trip < 0.1
    finally:
        await sender.close()
        await receiver.close()


async def test_chat_hands_and_host_mute_reach_everyone(server: RunningServer) -> None:
    room = await server.create_room("procedure")
    host, speaker = await _attendees(server, room, ["host", "speaker"])
    try:
        await speaker.publish(video=False)
        await speaker.send({"type": "chat", "text": "привіт, hello"})
        message = await host.wait_for("chat")
        assert (message["name"], message["text"]) == ("person 1", "привіт, hello")
        await speaker.send({"type": "hand", "raised": True})
        await host.wait_for("queue", where=lambda m: m["participants"] == [speaker.id])
        await host.send({"type": "hand", "raised": True})
        queue = await host.wait_for("queue", where=lambda m: len(m["participants"]) == 2)
        assert queue["participants"] == [speaker.id, host.id]
        await host.send({"type": "mute", "participant": speaker.id})
        muted = await speaker.wait_for("muted")
        assert muted["by"] == host.id
        update = await host.wait_for(
            "participant-updated",
            where=lambda m: m["participant"]["id"] == speaker.id
            and m["participant"]["muted_by_host"])
        assert update["participant"]["audio"] is False
    finally:
        await host.close()
        await speaker.close()


async def test_a_removed_participant_cannot_come_back_and_a_locked_room_admits_no_one(
    server: RunningServer,
) -> None:
    room = await server.create_room("strict")
    host, guest = await _attendees(server, room, ["host", "speaker"])
    try:
        await host.send({"type": "remove", "participant": guest.id})
        await host.wait_for("participant-left")
        for _ in range(50):
            if guest.closed:
                break
            await asyncio.sleep(0.1)
        assert guest.closed is not None and guest.closed[0] == 4403
        again = Attendee(server.ws_url, guest.token, "again")
        with pytest.raises(ConnectionError, match="4403"):
            await again.join()
        await again.close()
        await host.send({"type": "lock", "locked": True})
        await host.wait_for("room", where=lambda m: m["locked"])
        late = Attendee(server.ws_url, server.token(room, "speaker"), "late")
        with pytest.raises(ConnectionError, match="4403"):
            await late.join()
        await late.close()
    finally:
        await host.close()
        await guest.close()


async def test_a_dropped_connection_resumes_the_same_place_and_media(
    server: RunningServer,
) -> None:
    room = await server.create_room("flaky")
    watcher, mover = await _attendees(server, room, ["speaker", "speaker"])
    try:
        await mover.publish(audio=False)
        await watcher.wait_frames((mover.id, "camera"), 10)
        resume = mover.joined["resume"]
        await mover.close()
        await watcher.wait_for("participant-updated",
                               where=lambda m: not m["participant"]["connected"])
        back = Attendee(server.ws_url, mover.token, "mover")
        joined = await back.join(resume=resume)
        assert joined["resumed"] is True
        assert joined["participant"]["id"] == mover.id
        before = watcher.frames[(mover.id, "camera")]
        await back.publish(audio=False)
        await watcher.wait_frames((mover.id, "camera"), before + 15)
        assert not any(m["type"] == "participant-left" for m in watcher.messages)
        await back.close()
    finally:
        await watcher.close()


async def test_chat_and_attendance_survive_a_server_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    running = await server_app.start(config)
    try:
        room = (await running.services.store.create_room("durable")).id
        token = tokens.sign(running.services.secret, room, "speaker", 600, time.time())
        ws_url = running.base_url.replace("http", "ws", 1) + "/ws"
        first = Attendee(ws_url, token, "first")
        await first.join()
        meeting = first.joined["meeting"]["id"]
        await first.send({"type": "chat", "text": "before the restart"})
        await first.wait_for("chat")
    finally:
        await running.stop()
    await first.close()
    running = await server_app.start(config)
    try:
        ws_url = running.base_url.replace("http", "ws", 1) + "/ws"
        second = Attendee(ws_url, token, "first")
        joined = await second.join()
        assert joined["meeting"]["id"] == meeting
        assert [c["text"] for c in joined["chat"]] == ["before the restart"]
        rows = await running.services.store.attendance(meeting)
        assert len(rows) == 2 and rows[0].left_at is not None
        await second.close()
    finally:
        await running.stop()


async def test_h264_is_forwarded_when_the_publisher_offers_only_h264(
    server: RunningServer,
) -> None:
    room = await server.create_room("h264")
    sender, receiver = await _attendees(server, room, ["speaker", "listener"])
    try:
        answer = await sender.publish(audio=False, video_codec="video/H264")
        assert "H264/90000" in answer["sdp"] and "VP8/90000" not in answer["sdp"]
        await receiver.wait_frames((sender.id, "camera"), 20)
        assert receiver.frame_sizes[(sender.id, "camera")] == (320, 240)
        offer = next(m for m in receiver.messages if m["type"] == "subscribe-offer")
        assert "H264/90000" in offer["sdp"]
    finally:
        await sender.close()
        await receiver.close()


async def test_metrics_count_participants_and_forwarded_packets(server: RunningServer) -> None:
    room = await server.create_room("metrics")
    sender, receiver = await _attendees(server, room, ["speaker", "listener"])
    try:
        await sender.publish()
        await receiver.wait_frames((sender.id, "camera"), 10)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/healthz") as response:
                assert await response.json() == {"status": "ok"}
            async with http.get(f"{server.base_url}/metrics") as response:
                text = await response.text()
        values = {line.split()[0]: float(line.split()[1])
                  for line in text.splitlines() if not line.startswith("#")}
        assert values["townhall_participants"] == 2
        assert values["townhall_producers"] == 2
        assert values["townhall_consumers"] == 2
        assert values["townhall_packets_forwarded_total"] >= 10
        assert values["townhall_bytes_forwarded_total"] > values["townhall_packets_forwarded_total"]
        assert values["townhall_socket_drops_total"] == 0
        assert values["townhall_loop_stalls_total"] >= 0
        loop_watch = server.running.services.loop_watch
        assert loop_watch is not None and loop_watch.busy(), "a live room: watched closely"
        assert values["townhall_loop_stall_seconds_total"] >= \
            values["townhall_loop_longest_stall_seconds"] >= 0
        if producer_module.fanout is not None:  # the native fan-out made the steady copies
            assert values["townhall_copies_native_total"] >= 5
            assert "townhall_copies_python_total" in values
            assert values["townhall_copies_unsent_total"] == 0
    finally:
        await sender.close()
        await receiver.close()


async def test_a_media_connection_closed_unnoticed_does_not_break_another_participants_publish(
    server: RunningServer,
) -> None:
    room = await server.create_room("closed unnoticed")
    host, lost = await _attendees(server, room, ["host", "speaker"])
    late: Attendee | None = None
    try:
        await host.publish()
        await lost.wait_for("subscribe-offer")
        live = server.running.services.registry.find(room)
        assert live is not None
        gone = live.participants[lost.id]
        await until(lambda: not gone.offer_pending, 5, "the subscription is answered")
        transport = gone.subscribe_transport
        assert transport is not None
        # Its connection dies, and the room has not heard yet when the next publish comes.
        transport.pc.remove_all_listeners("connectionstatechange")
        await transport.pc.close()

        late = Attendee(server.ws_url, server.token(room, "speaker"), "late")
        await late.join()
        answer = await late.publish()
        assert "m=video" in answer["sdp"]
        await host.wait_for("subscribe-offer", where=lambda m: any(
            c["participant"] == late.id for c in m["consumers"]))
        assert late.closed is None and host.closed is None
        # The room hears of it, and offers everything again on a new connection.
        await lost.wait_for("subscribe-offer", where=lambda m: m["connection"] == 2)
        assert gone.subscribe_transport is not transport
        await lost.wait_frames((late.id, "camera"), 10)
    finally:
        for p in (host, lost, late):
            if p is not None:
                await p.close()


async def test_a_lost_receiving_connection_is_offered_again_and_the_video_comes_back(
    server: RunningServer,
) -> None:
    room = await server.create_room("lost receiving")
    host, watcher = await _attendees(server, room, ["host", "speaker"])
    try:
        await host.publish()
        await watcher.wait_frames((host.id, "camera"), 10)
        first = await watcher.wait_for("subscribe-offer")
        assert first["connection"] == 1
        live = server.running.services.registry.find(room)
        assert live is not None
        lost = live.participants[watcher.id].subscribe_transport
        assert lost is not None
        # What the transport does when ICE gives up (connection state "failed").
        await lost.close()

        again = await watcher.wait_for("subscribe-offer", where=lambda m: m["connection"] == 2)
        assert {(c["participant"], c["kind"]) for c in again["consumers"]} == \
            {(host.id, "audio"), (host.id, "video")}
        before = watcher.frames[(host.id, "camera")]
        await watcher.wait_frames((host.id, "camera"), before + 15)
        await watcher.wait_frames((host.id, "microphone"), 25)
        assert live.participants[watcher.id].subscribe_transport is not lost

        # An answer meant for the lost connection changes nothing and is no error.
        await watcher.send({"type": "subscribe-answer", "sdp": "v=0\r\n", "connection": 1})
        since = len(watcher.messages)
        await watcher.send({"type": "ping"})
        await watcher.wait_for("pong", since=since)
        assert not [m for m in watcher.messages if m["type"] == "error"]
        assert watcher.closed is None and host.closed is None
    finally:
        await host.close()
        await watcher.close()


def _fall_silent(pc: Any) -> None:
    """Nothing the peer connection sends leaves any more, as when its uplink dies."""

    class Quiet:
        def __init__(self, transport: Any) -> None:
            self.close = transport.close  # the socket still closes with the connection

        def sendto(self, data: bytes, addr: Any = None) -> None:
            pass

    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is not None:
            for protocol in dtls.transport._connection._protocols:
                protocol.transport = Quiet(protocol.transport)


async def test_a_receiving_connection_that_falls_silent_is_offered_again_before_ice_gives_up(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeout = 5.0
    monkeypatch.setattr(router_module, "SILENCE_TIMEOUT", timeout)
    room = await server.create_room("silent receiving")
    host, watcher, steady = await _attendees(server, room, ["host", "speaker", "speaker"])
    try:
        await host.publish()
        for attendee in (watcher, steady):
            await attendee.wait_frames((host.id, "camera"), 10)
        assert watcher.subscribe_pc is not None
        _fall_silent(watcher.subscribe_pc)
        silent_at = time.monotonic()
        await watcher.wait_for("subscribe-offer", timeout=timeout + 10,
                               where=lambda m: m["connection"] == 2)
        waited = time.monotonic() - silent_at
        # found by the router's check (once a second), not by ICE's consent (about 50 s)
        assert timeout - 1.5 < waited < timeout + 4, waited
        before = watcher.frames[(host.id, "camera")]
        await watcher.wait_frames((host.id, "camera"), before + 15)
        # a connection that keeps sending (receiver reports, consent) keeps its place
        assert [m.get("connection") for m in steady.messages
                if m["type"] == "subscribe-offer"] == [1] * len(
                    [m for m in steady.messages if m["type"] == "subscribe-offer"])
    finally:
        for attendee in (host, watcher, steady):
            await attendee.close()


async def test_a_page_that_reports_its_media_connections_lost_gets_new_ones(
    server: RunningServer,
) -> None:
    room = await server.create_room("receive restart")
    host, watcher = await _attendees(server, room, ["host", "speaker"])
    try:
        await host.publish()
        await watcher.wait_frames((host.id, "camera"), 10)
        since = len(watcher.messages)
        for bad in ({}, {"connection": 0}, {"connection": "1"}, {"connection": True}):
            await watcher.send({"type": "receive-lost", **bad})
            error = await watcher.wait_for("error", since=since)
            assert error["code"] == "bad-request", error
            since = len(watcher.messages)
        await watcher.send({"type": "receive-lost", "connection": 1})
        again = await watcher.wait_for("subscribe-offer", where=lambda m: m["connection"] == 2)
        assert {c["kind"] for c in again["consumers"]} == {"audio", "video"}
        before = watcher.frames[(host.id, "camera")]
        await watcher.wait_frames((host.id, "camera"), before + 15)
        # the old number again (a late report): the current connection stays
        since = len(watcher.messages)
        await watcher.send({"type": "receive-lost", "connection": 1})
        await watcher.send({"type": "ping"})
        await watcher.wait_for("pong", since=since)
        await asyncio.sleep(0.5)
        assert [m for m in watcher.messages[since:]
                if m["type"] in ("subscribe-offer", "error")] == []

        # the publishing side: the server lets the connection go and asks for a new one
        since = len(host.messages)
        await host.send({"type": "publish-lost"})
        await host.wait_for("publish-restart", since=since)
        await host.send({"type": "publish-lost"})  # reported twice: nothing left to let go
        await host.send({"type": "ping"})
        await host.wait_for("pong", since=since)
        assert [m["type"] for m in host.messages[since:]
                if m["type"] in ("publish-restart", "error")] == ["publish-restart"]
        assert host.closed is None and watcher.closed is None
    finally:
        await host.close()
        await watcher.close()


async def test_a_lost_publishing_connection_asks_the_page_to_publish_again(
    server: RunningServer,
) -> None:
    room = await server.create_room("lost publishing")
    host, watcher = await _attendees(server, room, ["host", "speaker"])
    try:
        await host.publish()
        await watcher.wait_frames((host.id, "camera"), 10)
        live = server.running.services.registry.find(room)
        assert live is not None
        lost = live.participants[host.id].publish_transport
        assert lost is not None
        await lost.close()

        await host.wait_for("publish-restart")
        # Everyone is told the camera and microphone are gone, and stops receiving them.
        await watcher.wait_for("participant-updated", where=lambda m: (
            m["participant"]["id"] == host.id and not m["participant"]["video"]
            and not m["participant"]["audio"]))
        await watcher.wait_for("subscribe-offer", where=lambda m: not m["consumers"])

        answer = await host.publish(restart=True)
        assert "m=video" in answer["sdp"]
        assert live.participants[host.id].publish_transport is not lost
        await watcher.wait_for("participant-updated", where=lambda m: (
            m["participant"]["id"] == host.id and m["participant"]["video"]))
        before = watcher.frames[(host.id, "camera")]
        await watcher.wait_frames((host.id, "camera"), before + 15)
        assert watcher.closed is None and host.closed is None
    finally:
        await host.close()
        await watcher.close()


async def test_a_participant_who_leaves_leaves_little_for_a_full_garbage_collection(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (without transport.TAKE_APART_AFTER's taking apart, about 1,360 objects here)
    monkeypatch.setattr(transport_module, "TAKE_APART_AFTER", 0.0)
    room = await server.create_room("leaving")
    people = await _attendees(server, room, ["host", "speaker", "speaker", "speaker"])
    live = server.running.services.registry.find(room)
    assert live is not None
    try:
        await asyncio.gather(*(p.publish() for p in people))
        for me in people[1:]:
            await me.wait_frames((people[0].id, "camera"), 10)
        leaver = people[0]
        gc.collect()
        gc.disable()
        try:
            assert leaver.ws is not None
            await leaver.ws.close()  # its connections stay here: only the server's side goes
            await until(lambda: leaver.id not in live.participants, 10, "the leave")
            await asyncio.sleep(1.0)
            found = gc.collect()
        finally:
            gc.enable()
        assert found < 400, f"{found} objects in reference cycles after one person left"
    finally:
        for p in people:
            await p.close()
