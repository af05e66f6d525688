"""ICE-TCP on the shared port, driven by a hand-written RFC 4571 client on loopback."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator

import aioice.ice
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection

from townhall import beat
from townhall.sfu.ice import IceMux
from townhall.sfu.icetcp import FrameDecoder, TcpFrameListener, encode_frame

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def mux(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[IceMux]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])
    ice_mux = IceMux(
        [LOOPBACK],
        udp_port=-1,
        tcp_port=0,
        tcp_first_frame_timeout=0.5,
        tcp_end_of_candidates_delay=3.0,
    )
    await ice_mux.start()
    try:
        yield ice_mux
    finally:
        await ice_mux.close()


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
    assert ufrag and pwd, sdp
    return ufrag.group(1), pwd.group(1)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return await reader.readexactly(length)


def binding_request(username: str, password: str, controlling: bool = True) -> stun.Message:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1845501695
    if controlling:
        request.attributes["ICE-CONTROLLING"] = 1
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return request


async def server_answering_tcp_only(mux: IceMux) -> tuple[RTCPeerConnection, str, str, str]:
    """A server pc answering a plain aiortc offer whose candidates are UDP only.

    Returns the server pc, the USERNAME a remote uses in its checks, the server's password
    and the client's password.
    """
    client = new_pc()
    client.createDataChannel("chat")
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription
    await client.close()
    assert "a=end-of-candidates" in offer.sdp

    server = new_pc()
    mux.attach(server)
    await server.setRemoteDescription(offer)
    await server.setLocalDescription(await server.createAnswer())
    server_ufrag, server_pwd = ice_credentials(server.localDescription.sdp)
    client_ufrag, client_pwd = ice_credentials(offer.sdp)
    assert f"tcp 2124414975 {LOOPBACK} {mux.tcp_port} typ host tcptype passive" in (
        server.localDescription.sdp
    )
    return server, f"{server_ufrag}:{client_ufrag}", server_pwd, client_pwd


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_tcp_active_peer_connects_from_an_unsignalled_port_after_end_of_candidates(
    mux: IceMux,
) -> None:
    server, username, server_pwd, client_pwd = await server_answering_tcp_only(mux)
    reader, writer = await asyncio.open_connection(LOOPBACK, mux.tcp_port)
    try:
        await asyncio.sleep(0.3)  # the server has had end-of-candidates, and no pair at all
        assert server.iceConnectionState == "checking"

        request = binding_request(username, server_pwd)
        writer.write(encode_frame(bytes(request)))
        answered = checked = False
        while not (answered and checked):
            message = stun.parse_message(await asyncio.wait_for(read_frame(reader), 5))
            if message.transaction_id == request.transaction_id:
                assert message.message_class == stun.Class.RESPONSE
                assert message.check_message_integrity(server_pwd.encode())
                assert message.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")
                answered = True
            elif message.message_class == stun.Class.REQUEST:  # the server's triggered check
                assert message.attributes["USERNAME"] == ":".join(username.split(":")[::-1])
                assert message.check_message_integrity(client_pwd.encode())
                response = stun.Message(
                    message_method=stun.Method.BINDING,
                    message_class=stun.Class.RESPONSE,
                    transaction_id=message.transaction_id,
                )
                response.attributes["XOR-MAPPED-ADDRESS"] = writer.get_extra_info("peername")
                response.add_message_integrity(client_pwd.encode())
                response.add_fingerprint()
                writer.write(encode_frame(bytes(response)))
                checked = True

        await wait_for(lambda: server.iceConnectionState == "completed")
        assert mux.tcp_stream_count == 1

        await server.close()
        rest = await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the stream went too
        decoder = FrameDecoder()
        assert all(frame[0] in range(20, 64) for frame in decoder.feed(rest))  # DTLS records
        assert decoder.pending == 0
        await wait_for(lambda: mux.tcp_stream_count == 0, timeout=1)
        assert mux.connection_count == 0
    finally:
        writer.close()
        await server.close()


async def test_without_any_tcp_peer_ice_fails_once_the_end_of_candidates_delay_is_over(
    mux: IceMux,
) -> None:
    server, _, _, _ = await server_answering_tcp_only(mux)
    try:
        await asyncio.sleep(1.0)
        assert server.iceConnectionState == "checking"
        await wait_for(lambda: server.iceConnectionState == "failed", timeout=4)
    finally:
        await server.close()


async def test_an_end_of_candidates_held_back_is_not_passed_to_a_connection_closed_meanwhile(
    mux: IceMux,
) -> None:
    server, _, _, _ = await server_answering_tcp_only(mux)
    connection = server.sctp.transport.transport.iceGatherer._connection
    passed: list[object] = []

    async def add_remote_candidate(candidate: object) -> None:
        passed.append(candidate)

    mux._tcp_end_delay = 0.05
    try:
        await mux._end_remote_candidates(connection, add_remote_candidate)
        assert passed == [None]  # open: passed on after the delay
    finally:
        await server.close()
    await mux._end_remote_candidates(connection, add_remote_candidate)
    assert passed == [None]  # closed meanwhile: nothing more


@pytest.mark.parametrize(
    "first_frame",
    [
        b"\x16\xfe\xfd" + b"d" * 30,  # DTLS before any STUN
        b"\x00\x01\x00\x04" + b"x" * 16,  # malformed STUN
        bytes(binding_request("nope:abcd", "p" * 22)),  # ufrag of nobody
    ],
    ids=["dtls", "malformed-stun", "unknown-ufrag"],
)
async def test_stream_whose_first_frame_names_no_connection_is_closed(
    mux: IceMux, first_frame: bytes
) -> None:
    server, _, _, _ = await server_answering_tcp_only(mux)
    reader, writer = await asyncio.open_connection(LOOPBACK, mux.tcp_port)
    try:
        writer.write(encode_frame(first_frame))
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert server.iceConnectionState == "checking"
    finally:
        writer.close()
        await server.close()


async def test_silent_stream_is_closed_after_the_first_frame_timeout(mux: IceMux) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, mux.tcp_port)
    try:
        writer.write(b"\x00")  # half a length prefix, then nothing
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert asyncio.get_running_loop().time() - started >= 0.4
        await wait_for(lambda: mux.tcp_stream_count == 0, timeout=1)
    finally:
        writer.close()


async def test_a_frame_read_after_a_beat_wakes_the_beats_sleepers_before_their_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    loop = asyncio.get_running_loop()
    wakeups = beat.wakeups(loop)
    wakeups.readers += 1  # as the UDP socket's native reader does: the beats' timers wait
    frames: list[bytes] = []

    def on_frame(frame: bytes, peer: tuple[str, int]) -> bool:
        frames.append(frame)
        return True

    listener = TcpFrameListener(on_frame, lambda peer: None)
    port = await listener.start(LOOPBACK, 0)
    _, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        sleeper = wakeups.until(loop.time() + 0.05)
        await asyncio.sleep(0.1)
        assert not sleeper.done()  # its timer waits the slack
        writer.write(encode_frame(b"media"))
        await asyncio.wait_for(sleeper, 2.0)
        assert frames == [b"media"]
    finally:
        wakeups.readers -= 1
        writer.close()
        await listener.close()
