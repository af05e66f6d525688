"""Closing a transport: the router always hears of it, and aiortc's own closing is not broken."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from support import until
from townhall.errors import BadRequest, MediaClosed
from townhall.sfu import teardown
from townhall.sfu import transport as transport_module
from townhall.sfu.transport import Codec, Transport


class Handler:
    def __init__(self) -> None:
        self.closed: list[Transport] = []

    def rtp_received(self, transport: Transport, data: bytes) -> None:
        pass

    def rtcp_received(self, transport: Transport, data: bytes) -> None:
        pass

    def transport_ready(self, transport: Transport) -> None:
        pass

    def transport_closed(self, transport: Transport) -> None:
        self.closed.append(transport)


async def _connect(transport: Transport, client: RTCPeerConnection) -> str:
    """``client`` sends audio to ``transport`` and is connected; returns the transport's
    answer."""
    client.addTrack(AudioStreamTrack())
    await client.setLocalDescription(await client.createOffer())
    answer, _ = await transport.answer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await until(lambda: transport.pc.connectionState == "connected", 10, "connected")
    return answer


async def test_a_close_cancelled_halfway_still_closes_tells_the_handler_and_spoils_no_other_close(
) -> None:
    handler = Handler()
    transport = Transport(handler, name="cancelled")
    client = RTCPeerConnection()
    try:
        await _connect(transport, client)

        closing = asyncio.ensure_future(transport.close())
        await asyncio.sleep(0)  # inside aiortc's close, stopping DTLS and ICE
        # aiortc also closes a connection itself once DTLS has ended: a second close waits on
        # the first one's future.
        own = asyncio.ensure_future(transport.pc.close())
        await asyncio.sleep(0)
        assert not closing.done()
        closing.cancel()
        results = await asyncio.gather(closing, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        await asyncio.wait_for(own, 10)  # was cancelled with the caller when the cancel reached it
        assert transport.pc.connectionState == "closed"
        assert handler.closed == [transport]
        await transport.close()  # closing again waits for nothing and tells nobody twice
        assert handler.closed == [transport]
    finally:
        await client.close()


async def test_a_closed_transport_is_taken_apart_later_and_still_reads_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "TAKE_APART_AFTER", 0.0)
    handler = Handler()
    transport = Transport(handler, name="taken apart")
    client = RTCPeerConnection()
    try:
        answer = await _connect(transport, client)
        with pytest.raises(ValueError, match="closed"):
            teardown.take_apart(transport.pc)  # never an open one
        slot = transport.add_outgoing(Codec("audio/opus", 48000, 111, 2))
        parts = teardown.parts(transport.pc)
        await transport.close()
        await until(lambda: not transport.pc.getTransceivers(), 5, "taken apart")
        assert parts and all(not vars(part) for part in parts)
        # what callers may still ask of a closed transport still answers
        assert transport.pc.connectionState == "closed"
        assert transport.pc.signalingState == "closed"
        assert slot.mid is None
        with pytest.raises(MediaClosed):
            await transport.offer()
        with pytest.raises(BadRequest, match="closed"):
            await transport.accept_answer(answer)
    finally:
        await client.close()


async def test_a_connected_state_heard_after_the_close_began_links_nothing() -> None:
    handler = Handler()
    transport = Transport(handler, name="closing")
    client = RTCPeerConnection()
    try:
        await _connect(transport, client)
        await until(lambda: transport.ready, 5, "ready")
        transport._ready_task = None  # as if the "connected" handler had not run yet
        closing = asyncio.ensure_future(transport.close())
        await asyncio.sleep(0)  # the close began; aiortc still says "connected"
        assert transport.pc.connectionState == "connected"
        await transport._state_changed()  # the handler, late
        await closing
        assert transport._ready_task is None and not transport.ready
        assert transport.route is None and handler.closed == [transport]
    finally:
        await client.close()
