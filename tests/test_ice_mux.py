"""IceMux: one UDP port shared by every transport, and the demultiplexing table behind it."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection

from support import require_native_fanout
from townhall.sfu import ice, native
from townhall.sfu.ice import DemuxTable, IceMux, PrivateApiChanged, check_private_api
from townhall.sfu.icetcp import FrameDecoder, encode_frame

LOOPBACK = "127.0.0.1"


# --- the demultiplexing table -------------------------------------------------------------


@dataclass(eq=False)
class FakeTarget:
    ufrag: str
    password: str
    known: set[tuple[str, int]] = field(default_factory=set)

    def rank(self, addr: tuple[str, int]) -> int:
        return 2 if addr in self.known else 0

    def authenticates(self, message: stun.Message) -> bool:
        username = message.attributes.get("USERNAME", "")
        return bool(
            username.partition(":")[0] == self.ufrag
            and message.check_message_integrity(self.password.encode())
        )


PASSWORD = "p" * 22
A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)


def binding_request(username: str | None, password: str = PASSWORD) -> stun.Message:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if username is not None:
        request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return request


def binding_response(transaction_id: bytes) -> bytes:
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = A
    return bytes(response)


def table_with(*targets: FakeTarget) -> DemuxTable[FakeTarget]:
    table: DemuxTable[FakeTarget] = DemuxTable("test")
    for target in targets:
        table.add(target.ufrag, target)
    return table


def test_first_request_binds_its_address_to_the_connection_named_by_the_ufrag() -> None:
    one, two = FakeTarget("one1", PASSWORD), FakeTarget("two2", PASSWORD)
    table = table_with(one, two)

    routed = table.route(bytes(binding_request("two2:remote")), A)

    assert routed is not None and routed[0] is two
    assert routed[1] is not None and routed[1].message_class == stun.Class.REQUEST
    assert table.route(b"\x80\x00rtp-packet", A) == (two, None)
    assert table.bound(B) is None


def test_data_from_an_address_no_request_has_bound_is_dropped() -> None:
    table = table_with(FakeTarget("one1", PASSWORD))

    assert table.route(b"\x16\xfe\xfddtls-record", A) is None
    assert table.route(b"", A) is None


def test_malformed_stun_is_dropped_and_the_address_stays_bound() -> None:
    one = FakeTarget("one1", PASSWORD)
    table = table_with(one)
    table.route(bytes(binding_request("one1:remote")), A)
    good = bytes(binding_request("one1:remote"))

    assert table.route(good[:-3], A) is None  # length does not match the header
    assert table.route(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12, B) is None
    assert table.route(good[:20] + b"\x00", A) is None
    assert table.bound(A) is one


def test_request_for_an_unknown_ufrag_is_dropped() -> None:
    table = table_with(FakeTarget("one1", PASSWORD))

    assert table.route(bytes(binding_request("nope:remote")), A) is None
    assert table.route(bytes(binding_request(None)), A) is None
    assert table.bound(A) is None


def test_request_failing_authentication_is_answered_but_binds_nothing() -> None:
    one = FakeTarget("one1", PASSWORD)
    table = table_with(one)

    routed = table.route(bytes(binding_request("one1:remote", password="x" * 22)), A)

    assert routed is not None and routed[0] is one
    assert table.bound(A) is None


def test_response_goes_to_the_connection_whose_check_it_answers() -> None:
    one, two = FakeTarget("one1", PASSWORD), FakeTarget("two2", PASSWORD)
    table = table_with(one, two)
    table.expect_response(b"t" * 12, two)

    routed = table.route(binding_response(b"t" * 12), B)

    assert routed is not None and routed[0] is two
    assert table.bound(B) is two
    table.forget_response(b"t" * 12)
    assert table.route(binding_response(b"t" * 12), A) is None


def test_shared_ufrag_goes_to_the_connection_that_knows_the_remote_address() -> None:
    first, second = FakeTarget("same", PASSWORD), FakeTarget("same", PASSWORD, known={B})
    table = table_with(first, second)

    to_a = table.route(bytes(binding_request("same:remote")), A)
    to_b = table.route(bytes(binding_request("same:remote")), B)

    assert to_a is not None and to_a[0] is first
    assert to_b is not None and to_b[0] is second


def test_removing_a_connection_frees_its_addresses_for_the_next_request() -> None:
    first, second = FakeTarget("same", PASSWORD), FakeTarget("same", PASSWORD)
    table = table_with(first, second)
    table.route(bytes(binding_request("same:remote")), A)

    assert table.remove(first) == [A]

    assert table.route(b"\x80rtp", A) is None
    routed = table.route(bytes(binding_request("same:remote")), A)
    assert routed is not None and routed[0] is second


def test_frames_split_across_reads_are_reassembled_in_order() -> None:
    stream = encode_frame(b"first") + encode_frame(b"") + encode_frame(b"x" * 300)
    decoder = FrameDecoder()

    frames = [f for i in range(0, len(stream), 7) for f in decoder.feed(stream[i : i + 7])]

    assert frames == [b"first", b"", b"x" * 300]
    assert decoder.pending == 0
    with pytest.raises(ValueError, match="longer than 65535"):
        encode_frame(b"x" * 65536)


# --- contract with aiortc/aioice internals --------------------------------------------------


def test_aiortc_and_aioice_still_have_the_private_names_the_mux_uses() -> None:
    check_private_api()


def test_a_vanished_private_name_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport")
    monkeypatch.delattr(aioice.ice.Connection, "get_component_candidates")

    with pytest.raises(PrivateApiChanged) as raised:
        check_private_api()

    assert "RTCPeerConnection._RTCPeerConnection__createDtlsTransport()" in str(raised.value)
    assert "aioice.Connection.get_component_candidates" in str(raised.value)


# --- loopback integration -------------------------------------------------------------------


@pytest.fixture
def loopback_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain aiortc clients gather on 127.0.0.1 only, so no packet leaves loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


@pytest.fixture
async def mux(loopback_clients: None) -> AsyncIterator[IceMux]:
    ice_mux = IceMux([LOOPBACK], udp_port=0, tcp_port=-1)
    await ice_mux.start()
    try:
        yield ice_mux
    finally:
        await ice_mux.close()


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def candidate_ports(sdp: str) -> list[tuple[str, int]]:
    return [
        (m.group(1).lower(), int(m.group(2)))
        for m in re.finditer(r"a=candidate:\S+ \d+ (\S+) \d+ \S+ (\d+) typ", sdp)
    ]


async def next_message(channel: RTCDataChannel) -> str:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @channel.on("message")
    def on_message(message: str) -> None:
        if not future.done():
            future.set_result(message)

    return await future


@dataclass
class Pairing:
    server: RTCPeerConnection
    client: RTCPeerConnection
    server_channel: asyncio.Future[RTCDataChannel]
    client_channel: asyncio.Future[RTCDataChannel]
    server_received: list[str] = field(default_factory=list)


async def pair_client_offers(mux: IceMux, index: int) -> Pairing:
    server, client = new_pc(), new_pc()
    mux.attach(server)
    loop = asyncio.get_running_loop()
    pairing = Pairing(server, client, loop.create_future(), loop.create_future())
    channel = client.createDataChannel("chat")
    channel.on("open", lambda: pairing.client_channel.set_result(channel))
    client.addTransceiver("audio", direction="sendrecv")

    @server.on("datachannel")
    def on_datachannel(server_channel: RTCDataChannel) -> None:
        pairing.server_channel.set_result(server_channel)

    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(server.localDescription)
    return pairing


async def pair_server_offers(mux: IceMux, index: int) -> Pairing:
    server, client = new_pc(), new_pc()
    mux.attach(server)
    loop = asyncio.get_running_loop()
    pairing = Pairing(server, client, loop.create_future(), loop.create_future())
    server.addTransceiver("audio", direction="sendrecv")  # a second transport until BUNDLE
    channel = server.createDataChannel("chat")
    channel.on("open", lambda: pairing.server_channel.set_result(channel))

    @client.on("datachannel")
    def on_datachannel(client_channel: RTCDataChannel) -> None:
        pairing.client_channel.set_result(client_channel)

    await server.setLocalDescription(await server.createOffer())
    await client.setRemoteDescription(server.localDescription)
    await client.setLocalDescription(await client.createAnswer())
    await server.setRemoteDescription(client.localDescription)
    return pairing


Pair = Callable[[IceMux, int], Awaitable[Pairing]]


async def exchange(pairings: list[Pairing]) -> list[list[str]]:
    """Each client sends two messages; each server records and echoes them with its index."""
    channels = []
    for index, pairing in enumerate(pairings):
        server_channel = await asyncio.wait_for(pairing.server_channel, 8)
        client_channel = await asyncio.wait_for(pairing.client_channel, 8)

        def echo(message: str, i: int = index, ch: RTCDataChannel = server_channel) -> None:
            pairings[i].server_received.append(message)
            ch.send(f"server-{i}:{message}")

        server_channel.on("message", echo)
        channels.append(client_channel)

    replies: list[list[str]] = [[] for _ in pairings]
    done = asyncio.Event()

    for index, channel in enumerate(channels):

        def collect(message: str, i: int = index) -> None:
            replies[i].append(message)
            if all(len(r) == 2 for r in replies):
                done.set()

        channel.on("message", collect)
    for index, channel in enumerate(channels):
        channel.send(f"client-{index}-a")
        channel.send(f"client-{index}-b")
    await asyncio.wait_for(done.wait(), 5)
    return replies


@pytest.mark.parametrize("pair", [pair_client_offers, pair_server_offers])
async def test_three_transports_share_one_udp_port_and_each_gets_only_its_own_data(
    mux: IceMux, pair: Pair
) -> None:
    pairings = [await pair(mux, i) for i in range(3)]
    try:
        for pairing in pairings:
            sdp = pairing.server.localDescription.sdp
            assert candidate_ports(sdp), sdp
            assert set(candidate_ports(sdp)) == {("udp", mux.udp_port)}

        replies = await exchange(pairings)

        for index, pairing in enumerate(pairings):
            assert pairing.server_received == [f"client-{index}-a", f"client-{index}-b"]
            assert replies[index] == [
                f"server-{index}:client-{index}-a",
                f"server-{index}:client-{index}-b",
            ]
            assert pairing.server.connectionState == "connected"
        assert mux.connection_count == 3  # BUNDLE left one ICE connection per peer connection
    finally:
        for pairing in pairings:
            await pairing.client.close()
            await pairing.server.close()
    assert mux.connection_count == 0


async def test_a_peer_whose_consent_answers_come_a_second_late_keeps_its_connection(
    mux: IceMux, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late answer is still an answer (RFC 7675 counts 30 s without one). Consent is checked
    every 0.2 s here instead of 5 s, so six failed checks would take about 4 s."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    pairing = await pair_client_offers(mux, 0)
    try:
        await exchange([pairing])
        loop = asyncio.get_running_loop()
        client_ice = pairing.client.sctp.transport.transport._connection
        for pair in client_ice._nominated.values():
            protocol = pair.protocol
            send = protocol.send_stun

            def late(message: stun.Message, addr: tuple[str, int], send: Any = send) -> None:
                if message.message_class == stun.Class.RESPONSE:
                    loop.call_later(1.0, send, message, addr)
                else:
                    send(message, addr)

            protocol.send_stun = late
        await asyncio.sleep(8)
        assert pairing.server.connectionState == "connected"
        pairing.client_channel.result().send("still here")
        for _ in range(50):
            if "still here" in pairing.server_received:
                break
            await asyncio.sleep(0.1)
        assert "still here" in pairing.server_received
    finally:
        await pairing.client.close()
        await pairing.server.close()


async def test_garbage_on_the_shared_port_is_dropped_without_disturbing_a_session(
    mux: IceMux,
) -> None:
    pairing = await pair_client_offers(mux, 0)
    noise = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for junk in (b"", b"\x00\x01garbage", b"\x16\xfe\xfd" + b"z" * 40, b"\x00" * 20):
            noise.sendto(junk, (LOOPBACK, mux.udp_port))
        noise.sendto(bytes(binding_request("nope:abcd")), (LOOPBACK, mux.udp_port))

        replies = await exchange([pairing])

        assert replies == [["server-0:client-0-a", "server-0:client-0-b"]]
    finally:
        noise.close()
        await pairing.client.close()
        await pairing.server.close()


async def test_closing_the_mux_fails_the_attached_transports(mux: IceMux) -> None:
    pairing = await pair_client_offers(mux, 0)
    try:
        await exchange([pairing])
        failed = asyncio.Event()

        @pairing.server.on("connectionstatechange")
        def on_state() -> None:
            if pairing.server.connectionState in ("failed", "closed"):
                failed.set()

        await mux.close()
        await asyncio.wait_for(failed.wait(), 5)
        assert mux.connection_count == 0
    finally:
        await pairing.client.close()
        await pairing.server.close()


async def test_a_closed_mux_keeps_no_descriptor_of_its_udp_socket(mux: IceMux) -> None:
    sockets = list(mux._udp)
    assert all(s.fd >= 0 for s in sockets)
    await mux.close()
    assert [s.fd for s in sockets] == [-1] * len(sockets)


async def test_attach_after_gathering_is_refused(mux: IceMux) -> None:
    pc = new_pc()
    try:
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(ValueError, match="before the peer connection gathers"):
            mux.attach(pc)
    finally:
        await pc.close()


async def test_every_announced_address_gets_candidates_on_the_same_two_ports() -> None:
    ice_mux = IceMux(["127.0.0.1", "127.0.0.2"], udp_port=0, tcp_port=0)
    await ice_mux.start()
    pc = new_pc()
    try:
        ice_mux.attach(pc)
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())

        candidates = re.findall(
            r"a=candidate:\S+ 1 (\S+) \d+ (\S+) (\d+) typ host( tcptype passive)?",
            pc.localDescription.sdp,
        )
        assert sorted(candidates) == [
            ("tcp", "127.0.0.1", str(ice_mux.tcp_port), " tcptype passive"),
            ("tcp", "127.0.0.2", str(ice_mux.tcp_port), " tcptype passive"),
            ("udp", "127.0.0.1", str(ice_mux.udp_port), ""),
            ("udp", "127.0.0.2", str(ice_mux.udp_port), ""),
        ]
        assert ice_mux.connection_count == 1
    finally:
        await pc.close()
        await ice_mux.close()
    assert ice_mux.connection_count == 0


# --- the shared socket's buffers ------------------------------------------------------------


def _may_exceed_system_limits() -> bool:
    """Whether this process holds CAP_NET_ADMIN (bit 12 of its effective capabilities)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 12 & 1)
    return False


def test_the_media_socket_gets_its_buffers_past_the_system_limit_where_the_process_may() -> None:
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    size = limit * 2  # more than the system gives without CAP_NET_ADMIN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        received = ice.set_buffers(sock, size)
        assert received == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if _may_exceed_system_limits():
            assert received == size
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 == size
        else:
            assert received == limit


async def test_a_receive_buffer_smaller_than_asked_is_reported_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ice, "set_buffers", lambda sock, size: 208 << 10)
    ice_mux = IceMux([LOOPBACK], udp_port=0, tcp_port=-1)
    with caplog.at_level(logging.WARNING, logger="townhall.sfu.ice"):
        await ice_mux.start()
    await ice_mux.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("receive buffer of 208 KiB" in m and "net.core.rmem_max=16777216" in m
               for m in warnings), warnings


async def test_datagrams_the_kernel_drops_at_a_full_socket_are_counted(mux: IceMux) -> None:
    assert mux.socket_drops() == 0
    fd = next(s.fd for s in mux._udp)
    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_DGRAM) as shared:  # the same socket
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(200):  # no await in between: the server reads none of them
            sender.sendto(b"\x80" + bytes(999), (LOOPBACK, mux.udp_port))
    drops = mux.socket_drops()
    assert drops is not None and 150 <= drops <= 200


async def test_a_media_path_keeps_a_native_route_only_while_its_receiver_is_the_routes(
    loopback_clients: None,
) -> None:
    """The socket's reader in C does not ask the connection for its media receiver, so the
    route must go whenever that receiver stops being the route's."""
    require_native_fanout()
    piece = native.load()
    ice_mux = IceMux([LOOPBACK], udp_port=0, tcp_port=-1, native=piece)
    await ice_mux.start()
    pairing = await pair_client_offers(ice_mux, 0)
    try:
        await exchange([pairing])
        pair = pairing.server.sctp.transport.transport._connection._nominated[1]
        protocol, sock = pair.protocol, pair.protocol.socket
        path = ice.media_path(protocol, pair.remote_addr)
        assert path is not None and path.sockaddr
        # stand-ins for the router's part of a route: nothing is sent before they go
        plain: Any = tuple(range(10))

        def first(data: bytes) -> None: ...
        def second(data: bytes) -> None: ...

        path.receive(first, plain)
        assert [route[2] for route in sock.routes.values()] == [first]
        path.receive(second)  # this receiver takes everything in Python
        assert protocol.media_receiver is second and sock.routes == {}
        path.receive(first, plain)
        path.close()
        assert protocol.media_receiver is None and sock.routes == {}
    finally:
        await pairing.client.close()
        await pairing.server.close()
        await ice_mux.close()
