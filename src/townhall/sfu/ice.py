"""ICE for every transport on one shared UDP port and one shared ICE-TCP port.

aioice binds a new UDP socket for each ICE connection and has no TCP at all. An :class:`IceMux`
binds, for each announced address, one UDP socket and one listening TCP socket (RFC 6544 passive
candidates, RFC 4571 framing, see ``icetcp.py``), all on the same two ports, and every
``RTCPeerConnection`` attached to it gathers host candidates on those sockets only::

    IceMux
    ├── _UdpSocket, one per address ──── DemuxTable ──┐
    └── _TcpSocket, one per address ──── DemuxTable ──┤
          └── TcpFrameListener (icetcp.py)            └── _MuxProtocol, one per ICE connection
                                                          and socket, in Connection._protocols

Demultiplexing, per socket (:class:`DemuxTable`): the first STUN Binding request from a remote
address names the ICE connection in its USERNAME (``"<local ufrag>:<remote ufrag>"``); once such
a request authenticates, that address belongs to the connection until the connection closes (on
TCP, the accepted stream does). A STUN response goes to the connection whose check it answers.
Anything else from an unknown address, unknown ufrags and malformed STUN are dropped one by one
and logged at debug; a TCP stream whose first frame cannot be routed is closed.

aiortc gives every transport of one peer connection the same ufrag and password, so until BUNDLE
is applied several ICE connections share a ufrag. The table then prefers the connection that
already knows the remote address as a candidate, then one that has started its checks, then the
first one created; the extra transports are closed once BUNDLE is applied, and their addresses
are routed afresh.

Every private aiortc/aioice name townhall relies on for this is used in this module only, and
:func:`check_private_api` (run by :meth:`IceMux.start` and by a contract test) fails loudly when
an upgrade removes one:

- ``RTCPeerConnection._RTCPeerConnection__createDtlsTransport``: wrapped on the attached instance,
  so each ICE transport it creates is taken over before it gathers.
- ``RTCIceGatherer._connection``: the ``aioice.Connection`` of a transport.
- ``aioice.Connection._protocols``: the list of local sockets that checks and data go through.
- ``aioice.Connection.get_component_candidates(component, addresses, timeout)``: replaced on the
  instance, so gathering returns the mux's candidates instead of binding sockets; and
  ``add_remote_candidate`` wrapped on the instance to delay end-of-candidates with ICE-TCP.
- ``aioice.StunProtocol`` internals its subclass relies on: ``receiver``, ``transactions``,
  ``local_candidate``, ``transport``, ``request``, ``send_stun``, ``send_data``, ``close``;
  and ``Connection.request_received``, ``data_received``, ``protocol_lost``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import struct
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aiortc import RTCIceGatherer, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from townhall import beat
from townhall.sfu.delay import ForwardingDelay
from townhall.sfu.fields import HoldingFields, ReceivedFields
from townhall.sfu.icetcp import TcpFrameListener
from townhall.sfu.native import Held, NativeSend, Plain

logger = logging.getLogger(__name__)

Address = tuple[str, int]

_CREATE_DTLS_TRANSPORT = "_RTCPeerConnection__createDtlsTransport"
_GATHER_HOOK = "get_component_candidates"
_END_HOOK = "add_remote_candidate"

#: RFC 6544 section 4.2: local preference of a passive TCP host candidate (direction-pref 4,
#: other-pref 8191), below any UDP host candidate's 65535.
_TCP_PASSIVE_LOCAL_PREF = (1 << 13) * 4 + 8191

#: aioice sends each consent check (RFC 7675: every 5 s, consent lost after 30 s without an
#: answer) once, with no retransmission, and counts it failed 0.5 s later. A peer whose answers
#: take longer than that (a congested mobile uplink, a busy machine) lost its connection after
#: six checks, though it answered every one. Here a check is sent again after 0.5 and 1.5 s,
#: and an answer up to 3.5 s after it counts; a peer that is really gone is found about 50 s
#: after its last answer instead of 30 s.
CONSENT_RETRANSMISSIONS = 2

#: The shared UDP socket's receive and send buffers, in bytes. Whatever holds the event loop
#: (a full collection, a burst of renegotiations when someone joins a large meeting) leaves
#: datagrams waiting in the kernel; a 50-person meeting sends the server some 10,000 a second,
#: and each takes about 2 KiB of buffer, so 16 MiB holds about a second and a half of them.
SOCKET_BUFFER_SIZE = 16 << 20
_DATAGRAM_READ_SIZE = 65536
_BIND_ATTEMPTS = 5


class PrivateApiChanged(RuntimeError):
    """aiortc or aioice no longer has a private name this module relies on."""


def check_private_api() -> None:
    """Raise :class:`PrivateApiChanged` if a private aiortc/aioice name used here is gone."""
    problems: list[str] = []
    if not callable(getattr(RTCPeerConnection, _CREATE_DTLS_TRANSPORT, None)):
        problems.append(f"RTCPeerConnection.{_CREATE_DTLS_TRANSPORT}()")
    gatherer = RTCIceGatherer(iceServers=[])
    connection = getattr(gatherer, "_connection", None)
    if not isinstance(connection, Connection):
        problems.append("RTCIceGatherer._connection (an aioice.Connection)")
    else:
        if not isinstance(getattr(connection, "_protocols", None), list):
            problems.append("aioice.Connection._protocols (a list)")
    hook = getattr(Connection, _GATHER_HOOK, None)
    if not callable(hook) or list(inspect.signature(hook).parameters) != [
        "self",
        "component",
        "addresses",
        "timeout",
    ]:
        problems.append(f"aioice.Connection.{_GATHER_HOOK}(component, addresses, timeout)")
    for name in ("request_received", "data_received", "protocol_lost"):
        if not callable(getattr(Connection, name, None)):
            problems.append(f"aioice.Connection.{name}()")
    for name in ("request", "send_stun", "send_data", "close"):
        if not callable(getattr(StunProtocol, name, None)):
            problems.append(f"aioice.StunProtocol.{name}()")
    annotations = inspect.get_annotations(StunProtocol)
    for name in ("local_candidate", "transport"):
        if name not in annotations:
            problems.append(f"aioice.StunProtocol.{name}")
    if "receiver" not in inspect.signature(StunProtocol.__init__).parameters:
        problems.append("aioice.StunProtocol(receiver)")
    if not callable(getattr(stun.Transaction, "response_received", None)):
        problems.append("aioice.stun.Transaction.response_received()")
    if problems:
        raise PrivateApiChanged(
            "aiortc/aioice internals used by townhall.sfu.ice are gone (written for aiortc "
            "1.16.0 and aioice 0.13.0): " + ", ".join(problems)
        )


# --- demultiplexing -----------------------------------------------------------------------


class DemuxTarget(Protocol):
    """What the table needs to know about the ICE connection behind a target."""

    def rank(self, addr: Address) -> int:
        """How likely this target is the right one for a new remote address (higher wins)."""
        ...

    def authenticates(self, message: stun.Message) -> bool:
        """Whether ``message`` carries this target's ufrag and a valid MESSAGE-INTEGRITY."""
        ...


TargetT = TypeVar("TargetT", bound=DemuxTarget)

_STUN_PARSE_ERRORS = (ValueError, struct.error, IndexError, KeyError)


class DemuxTable(Generic[TargetT]):
    """Who gets a datagram (or a TCP frame) that arrived on one shared socket."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._by_ufrag: dict[str, list[TargetT]] = {}
        self._by_address: dict[Address, TargetT] = {}
        self._by_transaction: dict[bytes, TargetT] = {}

    def add(self, ufrag: str, target: TargetT) -> None:
        self._by_ufrag.setdefault(ufrag, []).append(target)

    def remove(self, target: TargetT) -> list[Address]:
        """Forget ``target`` everywhere; return the remote addresses that were bound to it."""
        for ufrag, targets in list(self._by_ufrag.items()):
            if target in targets:
                targets.remove(target)
                if not targets:
                    del self._by_ufrag[ufrag]
        addresses = [a for a, t in self._by_address.items() if t is target]
        for addr in addresses:
            del self._by_address[addr]
        for tid in [i for i, t in self._by_transaction.items() if t is target]:
            del self._by_transaction[tid]
        return addresses

    def bound(self, addr: Address) -> TargetT | None:
        return self._by_address.get(addr)

    def unbind(self, addr: Address) -> None:
        self._by_address.pop(addr, None)

    def targets(self) -> list[TargetT]:
        return [t for targets in self._by_ufrag.values() for t in targets]

    def expect_response(self, transaction_id: bytes, target: TargetT) -> None:
        self._by_transaction[transaction_id] = target

    def forget_response(self, transaction_id: bytes) -> None:
        self._by_transaction.pop(transaction_id, None)

    def route(self, data: bytes, addr: Address) -> tuple[TargetT, stun.Message | None] | None:
        """Find the target for ``data`` from ``addr``, with the parsed STUN message if it is one.

        Returns ``None`` when the datagram is to be dropped.
        """
        if not data:
            logger.debug("%s: empty datagram from %s dropped", self.name, addr)
            return None
        if data[0] > 3:  # not STUN (RFC 7983): DTLS, RTP, RTCP
            target = self._by_address.get(addr)
            if target is None:
                logger.debug("%s: data from unknown address %s dropped", self.name, addr)
                return None
            return target, None

        try:
            message = stun.parse_message(data)
        except _STUN_PARSE_ERRORS as exc:
            logger.debug("%s: malformed STUN from %s dropped: %s", self.name, addr, exc)
            return None

        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            target = self._by_transaction.get(message.transaction_id)
            if target is None:
                target = self._by_address.get(addr)
            if target is None:
                logger.debug("%s: unexpected STUN response from %s dropped", self.name, addr)
                return None
            self._by_address.setdefault(addr, target)
            return target, message

        if message.message_class != stun.Class.REQUEST:
            target = self._by_address.get(addr)
            if target is None:
                logger.debug("%s: STUN indication from %s dropped", self.name, addr)
                return None
            return target, message

        username = message.attributes.get("USERNAME")
        bound = self._by_address.get(addr)
        if not isinstance(username, str):
            if bound is None:
                logger.debug("%s: STUN request without USERNAME from %s dropped", self.name, addr)
                return None
            return bound, message  # the ICE connection answers 400 itself
        targets = self._by_ufrag.get(username.partition(":")[0])
        if not targets:
            logger.debug("%s: STUN request for unknown ufrag from %s dropped", self.name, addr)
            return None
        if bound is not None and bound in targets:
            return bound, message
        target = max(targets, key=lambda t: t.rank(addr))  # ties: the first one added
        if target.authenticates(message):
            self._by_address[addr] = target
        return target, message


# --- the per-connection side of a shared socket ----------------------------------------------


class _SharedTransport(asyncio.DatagramTransport):
    """``protocol.transport`` of a :class:`_MuxProtocol`: sends through the shared socket."""

    def __init__(self, protocol: _MuxProtocol) -> None:
        super().__init__(extra={"sockname": protocol.socket.local_address})
        self._protocol = protocol

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not self._protocol.closed and addr is not None:
            self._protocol.socket.send(bytes(data), (addr[0], addr[1]))

    def close(self) -> None:  # closes this connection's view, never the shared socket
        self._protocol.detach()

    def is_closing(self) -> bool:
        return self._protocol.closed

    def abort(self) -> None:
        self.close()


class _MuxProtocol(StunProtocol, ReceivedFields):
    """Stands in for one of aioice's per-connection sockets, on a socket shared by all."""

    def __init__(self, mux: IceMux, connection: Connection, sock: _SharedSocket, component: int):
        super().__init__(connection)
        self.mux = mux
        self.socket = sock
        self.closed = False
        self.local_candidate = sock.candidate(component)
        self.transport = _SharedTransport(self)
        #: Takes SRTP/SRTCP datagrams past aioice's queue once a transport sets it (MediaPath).
        self.media_receiver: Callable[[bytes], None] | None = None
        #: Datagrams (or ICE-TCP frames) routed here so far: STUN, DTLS, SRTP and SRTCP.
        self.received = 0

    # DemuxTarget

    def rank(self, addr: Address) -> int:
        if any((c.host, c.port) == addr for c in self.receiver.remote_candidates):
            return 2
        return 1 if self.receiver.remote_username is not None else 0

    def authenticates(self, message: stun.Message) -> bool:
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            return False
        if username.partition(":")[0] != self.receiver.local_username:
            return False
        return message.check_message_integrity(self.receiver.local_password.encode("utf8"))

    # from the shared socket

    def handle_stun(self, message: stun.Message, addr: Address) -> None:
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            transaction = self.transactions.get(message.transaction_id)
            if transaction is not None:
                transaction.response_received(message, addr)
        elif message.message_class == stun.Class.REQUEST:
            self.receiver.request_received(message, addr, self)
            if self.socket.transport_name == "tcp":
                self._label_tcp_peer_reflexive(addr)

    def handle_data(self, data: bytes) -> None:
        self.receiver.data_received(data, self.local_candidate.component)

    def _label_tcp_peer_reflexive(self, addr: Address) -> None:
        # aioice labels every peer-reflexive candidate "udp"; one learnt on an accepted TCP
        # stream is the remote's active side (RFC 6544 section 7.2).
        for candidate in self.receiver.remote_candidates:
            if (
                candidate.type == "prflx"
                and (candidate.host, candidate.port) == addr
                and candidate.transport != "tcp"
            ):
                candidate.transport = "tcp"
                candidate.tcptype = "active"

    # towards the shared socket (aioice's StunProtocol interface)

    async def request(
        self,
        request: stun.Message,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        if retransmissions == 0:  # only aioice's consent check asks for none
            retransmissions = CONSENT_RETRANSMISSIONS
        self.socket.table.expect_response(request.transaction_id, self)
        try:
            return await super().request(request, addr, integrity_key, retransmissions)
        finally:
            self.socket.table.forget_response(request.transaction_id)

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        if not self.closed:
            self.socket.send(bytes(message), addr)

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.closed:
            self.socket.send(data, addr)

    async def close(self) -> None:
        self.detach()

    def detach(self) -> None:
        """Stop using the shared socket (idempotent)."""
        self.media_receiver = None
        self.socket.forget_routes(self)
        if not self.closed:
            self.closed = True
            self.socket.unregister(self)
            self.mux._forget(self)

    def __repr__(self) -> str:
        return f"mux-protocol({self.id} {self.socket.transport_name} {self.socket.local_address})"


# --- the media shortcut ----------------------------------------------------------------------


class MediaPath:
    """SRTP in and out of one ICE connection's nominated pair, past aioice and aiortc.

    ``sendto(data, address)`` writes a protected datagram (or ICE-TCP frame) to the remote side;
    :meth:`receive` makes every RTP/RTCP datagram (first byte 128-191, RFC 7983) from the remote
    go to ``receiver`` at once, from the socket's callback: no STUN parsing, no queue, no task
    switch. DTLS and STUN keep going through aioice. :meth:`close` (idempotent) stops receiving.
    """

    __slots__ = ("_protocol", "address", "delay", "fd", "hold", "sendto", "sockaddr")

    def __init__(self, protocol: _MuxProtocol, address: Address) -> None:
        self._protocol = protocol
        self.address = address
        self.sendto = protocol.socket.sender()
        #: Where to count each forwarded packet's delay (``None``: not measured, or counted by
        #: the socket when it sends what it held).
        self.delay: ForwardingDelay | None = protocol.mux.delay
        #: With the native piece (``native.py``): ``hold((srtp, packet, sockaddr))`` queues a
        #: plain packet that the socket protects and sends with the others of the same fan-out.
        self.hold: Callable[[Held], None] | None = None
        self.sockaddr = b""
        #: The UDP socket's descriptor, for the native fan-out (-1: none).
        self.fd = -1
        sock = protocol.socket
        if isinstance(sock, _UdpSocket) and sock.native is not None:
            sockaddr = sock.native.sockaddr(address)
            if sockaddr is not None and sock.fd >= 0:
                self.fd = sock.fd
                self.hold = sock.hold
                self.sockaddr = sockaddr
                self.delay = None

    def receive(self, receiver: Callable[[bytes], None], plain: Plain | None = None) -> None:
        """Send every SRTP/SRTCP datagram from the remote to ``receiver``. With ``plain`` (the
        native piece's route to the router, see ``native.Plain``), the socket's native reader
        takes SRTP from the remote to the router itself, past ``receiver``."""
        protocol = self._protocol
        if protocol.closed:
            return
        protocol.media_receiver = receiver
        sock = protocol.socket
        # the native reader does not ask the connection for its media receiver: a route is
        # there only while that receiver is the route's
        sock.forget_routes(protocol)
        if plain is not None and self.sockaddr and isinstance(sock, _UdpSocket):
            sock.routes[self.sockaddr] = (self.address, protocol, receiver, *plain)

    def close(self) -> None:
        protocol = self._protocol
        protocol.media_receiver = None
        sock = protocol.socket
        if isinstance(sock, _UdpSocket):
            route = sock.routes.get(self.sockaddr)
            if route is not None and route[1] is protocol:
                del sock.routes[self.sockaddr]

    @property
    def received(self) -> int:
        """Datagrams (or ICE-TCP frames) that have arrived from the remote so far, of any kind."""
        return self._protocol.received

    @property
    def closed(self) -> bool:
        return self._protocol.closed


def media_path(protocol: object, address: tuple[Any, ...]) -> MediaPath | None:
    """The shortcut for a nominated pair whose local side is an :class:`IceMux` socket (``None``
    for aioice's own sockets, which keep the ordinary path)."""
    if not isinstance(protocol, _MuxProtocol) or protocol.closed:
        return None
    return MediaPath(protocol, (address[0], address[1]))


# --- shared sockets ---------------------------------------------------------------------------


class _SharedSocket:
    transport_name = ""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.table: DemuxTable[_MuxProtocol] = DemuxTable()

    @property
    def local_address(self) -> Address:
        return (self.host, self.port)

    def candidate(self, component: int) -> Candidate:
        raise NotImplementedError

    def send(self, data: bytes, addr: Address) -> None:
        raise NotImplementedError

    def sender(self) -> Callable[[bytes, Address], None]:
        """The quickest way to send on this socket: ``sender()(data, addr)``."""
        return self.send

    async def bind(self, port: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def register(self, protocol: _MuxProtocol, ufrag: str) -> None:
        self.table.add(ufrag, protocol)

    def unregister(self, protocol: _MuxProtocol) -> None:
        self.table.remove(protocol)

    def forget_routes(self, protocol: _MuxProtocol) -> None:
        """Drop the native reader's routes to ``protocol`` (sockets that have none: nothing)."""

    def deliver_media(self, data: bytes, addr: Any) -> bool:
        """Hand an SRTP or SRTCP datagram from a bound address straight to the receiver its
        transport set (no STUN parsing, no aioice queue, no task switch). False if there is no
        such receiver: the datagram then takes the ordinary way (:meth:`deliver`)."""
        target = self.table._by_address.get(addr)
        if target is None:
            return False
        receiver = target.media_receiver
        if receiver is None:
            return False
        target.received += 1
        try:
            receiver(data)
        except Exception:
            logger.warning("%s: media from %s dropped, it failed", self.table.name, addr)
            logger.debug("media error", exc_info=True)
        return True

    def deliver(self, data: bytes, addr: Address) -> bool:
        """Route one datagram or frame to its ICE connection; False if it was dropped."""
        routed = self.table.route(data, addr)
        if routed is None:
            return False
        target, message = routed
        target.received += 1
        try:
            if message is None:
                target.handle_data(data)
            else:
                target.handle_stun(message, addr)
        except Exception:
            logger.warning("%s: packet from %s dropped, ICE failed on it", self.table.name, addr)
            logger.debug("ICE error", exc_info=True)
            return False
        return True


_SocketT = TypeVar("_SocketT", bound=_SharedSocket)


def udp_drops(inodes: set[int]) -> dict[int, int] | None:
    """Datagrams the kernel dropped (full receive queue) at each UDP socket of this network
    namespace whose inode is in ``inodes``, by inode, from /proc/net/udp and udp6 (None where
    they cannot be read)."""
    drops = {}
    try:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    if len(fields) >= 13 and int(fields[9]) in inodes:
                        drops[int(fields[9])] = int(fields[12])
    except (OSError, ValueError, StopIteration):
        return None
    return drops


#: Linux's SO_RCVBUFFORCE and SO_SNDBUFFORCE (the socket module does not name them).
_FORCED = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32} if sys.platform == "linux" else {}


def set_buffers(sock: socket.socket, size: int) -> int:
    """Give ``sock`` receive and send buffers of ``size`` bytes: past the system's limit
    (``net.core.rmem_max``/``wmem_max``) where the process may (CAP_NET_ADMIN), else as much
    of it as the limit allows. Returns the receive buffer's usable size (the kernel reports
    twice what it uses for data)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        _set_buffer(sock, option, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2


def _set_buffer(sock: socket.socket, option: int, size: int) -> None:
    forced = _FORCED.get(option)
    if forced is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
            return
        except PermissionError:
            pass  # no CAP_NET_ADMIN: up to the system's limit
    sock.setsockopt(socket.SOL_SOCKET, option, size)


class _UdpSocket(_SharedSocket, asyncio.DatagramProtocol, HoldingFields):
    """The shared UDP socket. With the native piece, the socket is its own and its reader
    (``native.read``, ``_read.c``) takes what arrives: RTP from a remote with a route in
    ``routes`` goes to the fan-out in C (RTCP from it to the router), every other datagram to
    :meth:`datagram_received`.
    Without it, the event loop's datagram transport reads and calls
    :meth:`datagram_received` for each datagram."""

    transport_name = "udp"

    def __init__(
        self, host: str, delay: ForwardingDelay | None = None, native: NativeSend | None = None
    ) -> None:
        super().__init__(host)
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._delay = delay
        self.fd = -1
        self.native = native
        self._holding = False
        self._held: list[Held] = []
        #: The beats the native reader rides (``beat.Wakeups``), while it does.
        self._riding: beat.Wakeups | None = None
        #: The native reader's routes: packed remote sockaddr -> (remote address, its ICE
        #: connection, that connection's media receiver, *``native.Plain``); see ``_read.c``.
        self.routes: dict[bytes, tuple[Any, ...]] = {}

    async def bind(self, port: int) -> None:
        if self.native is not None:
            self._bind_own(port)
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, port)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        self.table.name = f"ICE udp {self.host}:{self.port}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            self._set_buffers(sock)
        if hasattr(transport, "max_size"):  # asyncio reads into a 256 KiB buffer by default
            transport.max_size = _DATAGRAM_READ_SIZE  # type: ignore[attr-defined]

    def _bind_own(self, port: int) -> None:
        """Bind a socket of this one's own and read it with the native reader."""
        native = self.native
        assert native is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.host, port))
            # the kernel's receive time of each datagram: publishers' arrivals (transport
            # feedback) and the forwarding delay are measured from it, not from when the event
            # loop got to the datagram
            sock.setsockopt(socket.SOL_SOCKET, native.so_timestampns, 1)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self.table.name = f"ICE udp {self.host}:{self.port}"
        self.fd = sock.fileno()
        self._set_buffers(sock)
        # the reader is the callback itself: no Python frame per wake-up; it rides the beats
        loop = asyncio.get_running_loop()
        wakeups = beat.wakeups(loop)
        loop.add_reader(
            self.fd, native.read, self.fd, native.unprotect, native.unprotect_rtcp, self.routes,
            self.table._by_address, self.datagram_received, self._failed, self._held, self._flush,
            self._delay, self, wakeups)
        wakeups.add_reader()
        self._riding = wakeups

    def _set_buffers(self, sock: socket.socket) -> None:
        received = set_buffers(sock, SOCKET_BUFFER_SIZE)
        if received < SOCKET_BUFFER_SIZE:
            logger.warning(
                "%s: the kernel gave the media socket a receive buffer of %d KiB, not the "
                "%d KiB asked for: packets are lost whenever the server is held up. Raise "
                "it with `sysctl -w net.core.rmem_max=%d` (or run townhall with the "
                "CAP_NET_ADMIN capability)", self.table.name, received >> 10,
                SOCKET_BUFFER_SIZE >> 10, SOCKET_BUFFER_SIZE)

    def _failed(self, address: Any, exc: BaseException | None) -> None:
        """The native reader's report of a datagram it dropped (``address`` None: reading
        failed)."""
        if address is None:
            logger.warning("%s: reading the socket failed: %s", self.table.name, exc)
        else:
            logger.warning("%s: datagram from %s dropped, handling it failed", self.table.name,
                           address)
        logger.debug("datagram error", exc_info=exc)

    def forget_routes(self, protocol: _MuxProtocol) -> None:
        for key in [k for k, route in self.routes.items() if route[1] is protocol]:
            del self.routes[key]

    def candidate(self, component: int) -> Candidate:
        return Candidate(
            foundation=candidate_foundation("host", "udp", self.host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=self.host,
            port=self.port,
            type="host",
        )

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # RFC 7983: 128-191 is RTP/RTCP. An IPv4 address is already a (host, port) tuple.
        if data and 127 < data[0] < 192:
            if self.native is None and self._delay is None:
                if self.deliver_media(data, addr):
                    return
            elif self._deliver_held(data, addr):
                return
        self.deliver(data, (addr[0], addr[1]))

    def _deliver_held(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """``deliver_media``, timing the datagram if asked, and holding what its handling sends
        until the end (native piece)."""
        delay = self._delay
        # RTP, not RTCP; the native reader has set the arrival time from the datagram itself
        if delay is not None and len(data) > 1 and not 191 < data[1] < 224 and \
                not delay.arrived_ns:
            delay.arrived(self.fd)
        holding, self._holding = self._holding, self.native is not None
        try:
            return self.deliver_media(data, addr)
        finally:
            self._holding = holding
            if self._held:
                self._flush()
            if delay is not None:
                if self.native is not None:
                    delay.sent_many(self.native.take_sent())
                delay.done()

    def hold(self, item: Held) -> None:
        """Queue one packet for the native piece (sent at once outside a datagram's handling)."""
        self._held.append(item)
        if not self._holding:
            self._flush()

    def _flush(self) -> None:
        held = self._held.copy()  # the same list stays: the native reader holds it
        self._held.clear()
        native = self.native
        if native is None or not self._open:
            return
        sent = native.send(self.fd, held)
        if self._delay is not None:
            self._delay.sent_many(sent)

    def error_received(self, exc: Exception) -> None:
        logger.debug("%s: %s", self.table.name, exc)

    @property
    def _open(self) -> bool:
        if self._sock is not None:
            return True
        return self._transport is not None and not self._transport.is_closing()

    def send(self, data: bytes, addr: Address) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.sendto(data, addr)
            except OSError as exc:  # a full socket loses it, as a full queue would
                logger.debug("%s: sending to %s failed: %s", self.table.name, addr, exc)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, addr)

    def sender(self) -> Callable[[bytes, Address], None]:
        # The event loop's own sendto: one call per packet, no checks in Python. A transport
        # that closes drops its MediaPath first; the mux closes this socket only after that.
        transport = self._transport
        return self.send if transport is None else transport.sendto

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        riding, self._riding = self._riding, None
        if riding is not None:
            riding.remove_reader()
        # the number may soon name another file: nothing may send or read on it from here on
        self.fd = -1
        self.routes.clear()


class _TcpSocket(_SharedSocket):
    transport_name = "tcp"

    def __init__(self, host: str, first_frame_timeout: float) -> None:
        super().__init__(host)
        self._listener = TcpFrameListener(
            self._on_frame, self.table.unbind, first_frame_timeout=first_frame_timeout
        )

    async def bind(self, port: int) -> None:
        self.port = await self._listener.start(self.host, port)
        self.table.name = f"ICE tcp {self.host}:{self.port}"

    def candidate(self, component: int) -> Candidate:
        return Candidate(
            foundation=candidate_foundation("host", "tcp", self.host),
            component=component,
            transport="tcp",
            priority=candidate_priority(component, "host", _TCP_PASSIVE_LOCAL_PREF),
            host=self.host,
            port=self.port,
            type="host",
            tcptype="passive",
        )

    def _on_frame(self, frame: bytes, addr: Address) -> bool:
        if frame and 127 < frame[0] < 192 and self.deliver_media(frame, addr):
            return True
        self.deliver(frame, addr)
        # A stream is kept only once it belongs to an ICE connection.
        return self.table.bound(addr) is not None

    def send(self, data: bytes, addr: Address) -> None:
        if not self._listener.send(data, addr):
            logger.debug(
                "%s: frame to %s dropped (no stream or stream full)", self.table.name, addr
            )

    def unregister(self, protocol: _MuxProtocol) -> None:
        for addr in self.table.remove(protocol):
            self._listener.close_stream(addr)

    @property
    def stream_count(self) -> int:
        return self._listener.stream_count

    async def close(self) -> None:
        await self._listener.close()


# --- the mux ------------------------------------------------------------------------------


class IceMux:
    """Host candidates on one UDP port and one ICE-TCP port for every attached peer connection.

    ``addresses`` are the IPs announced in host candidates (and bound); empty means every local
    IPv4 address but loopback. A port of 0 picks a free port; -1 turns that transport off.

    With ICE-TCP on, a remote reaches the passive candidate from a port nobody signalled (a
    peer-reflexive candidate), so aioice would give up too early on a remote whose signalled
    candidates cannot pair with ours (say, UDP only while UDP is off here): the end of remote
    candidates is passed on ``tcp_end_of_candidates_delay`` seconds after aiortc signals it.
    Accepted TCP streams that send no routable STUN request within ``tcp_first_frame_timeout``
    seconds are closed.
    """

    def __init__(
        self,
        addresses: Sequence[str] = (),
        udp_port: int = 0,
        tcp_port: int = 0,
        *,
        tcp_first_frame_timeout: float = 10.0,
        tcp_end_of_candidates_delay: float = 10.0,
        delay: ForwardingDelay | None = None,
        native: NativeSend | None = None,
    ) -> None:
        for name, port in (("udp_port", udp_port), ("tcp_port", tcp_port)):
            if not -1 <= port <= 65535:
                raise ValueError(f"{name} must be -1 (off), 0 (any) or a port number")
        if udp_port == -1 and tcp_port == -1:
            raise ValueError("IceMux needs UDP or TCP, both are off")
        self._addresses = list(addresses)
        self._wanted_udp_port = udp_port
        self._wanted_tcp_port = tcp_port
        self._tcp_first_frame_timeout = tcp_first_frame_timeout
        self._tcp_end_delay = tcp_end_of_candidates_delay
        self._end_tasks: dict[Connection, asyncio.Task[None]] = {}
        self._udp: list[_UdpSocket] = []
        self._tcp: list[_TcpSocket] = []
        self._registered: dict[Connection, list[_MuxProtocol]] = {}
        self._attached: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self._state = "new"
        #: Forwarding delays of media received on UDP, when measured.
        self.delay = delay
        #: The native protect + sendmmsg piece, if used.
        self.native = native

    @property
    def udp_port(self) -> int:
        """The shared UDP port once started, -1 if UDP is off."""
        if self._wanted_udp_port == -1:
            return -1
        return self._udp[0].port if self._udp else self._wanted_udp_port

    @property
    def tcp_port(self) -> int:
        """The shared ICE-TCP port once started, -1 if ICE-TCP is off."""
        if self._wanted_tcp_port == -1:
            return -1
        return self._tcp[0].port if self._tcp else self._wanted_tcp_port

    @property
    def addresses(self) -> list[str]:
        return [s.host for s in (self._udp or self._tcp)]

    @property
    def connection_count(self) -> int:
        """ICE connections that gathered on the mux and have not closed yet."""
        return len(self._registered)

    @property
    def tcp_stream_count(self) -> int:
        """Accepted ICE-TCP streams still open."""
        return sum(s.stream_count for s in self._tcp)

    def socket_drops(self) -> int | None:
        """Datagrams the kernel dropped at the UDP sockets because their receive queue was
        full (the server was held up longer than the buffer lasts); None where the system does
        not say (not Linux)."""
        inodes = {os.fstat(s.fd).st_ino for s in self._udp if s.fd >= 0}
        drops = udp_drops(inodes) if inodes else {}
        return None if drops is None else sum(drops.values())

    async def start(self) -> None:
        """Check aiortc's internals and bind the sockets."""
        if self._state == "closed":
            raise RuntimeError("IceMux is closed")
        if self._state == "started":
            return
        check_private_api()
        addresses = self._addresses or get_host_addresses(use_ipv4=True, use_ipv6=False)
        if not addresses:
            raise ValueError("IceMux found no local address to announce")
        try:
            if self._wanted_udp_port != -1:
                delay, native = self.delay, self.native
                self._udp = await self._bind_all(
                    addresses, self._wanted_udp_port, lambda a: _UdpSocket(a, delay, native)
                )
            if self._wanted_tcp_port != -1:
                timeout = self._tcp_first_frame_timeout
                self._tcp = await self._bind_all(
                    addresses, self._wanted_tcp_port, lambda a: _TcpSocket(a, timeout)
                )
        except BaseException:
            await self._close_sockets()
            raise
        self._state = "started"
        logger.info(
            "ICE on %s, UDP port %d, TCP port %d",
            ", ".join(addresses),
            self.udp_port,
            self.tcp_port,
        )

    async def close(self) -> None:
        """Close the shared sockets; attached ICE connections lose their transport."""
        if self._state == "closed":
            return
        self._state = "closed"
        for connection, protocols in list(self._registered.items()):
            for protocol in list(protocols):
                protocol.detach()
                connection.protocol_lost(protocol)
        self._registered.clear()
        await self._cancel_end_tasks()
        await self._close_sockets()

    def attach(self, pc: RTCPeerConnection) -> None:
        """Make every ICE transport of ``pc`` gather only the mux's candidates.

        Call it right after creating ``pc``, before any offer or answer. Closing ``pc`` (or
        aiortc dropping a transport when BUNDLE is applied) unregisters its transports.
        """
        if self._state == "closed":
            raise RuntimeError("IceMux is closed")
        if pc in self._attached:
            return
        create = getattr(pc, _CREATE_DTLS_TRANSPORT, None)
        if not callable(create):
            raise PrivateApiChanged(f"RTCPeerConnection.{_CREATE_DTLS_TRANSPORT}() is gone")

        def create_and_take_over() -> RTCDtlsTransport:
            dtls_transport: RTCDtlsTransport = create()
            self._take_over(dtls_transport.transport.iceGatherer)
            return dtls_transport

        gatherers = [t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()]
        if pc.sctp is not None:
            gatherers.append(pc.sctp.transport.transport.iceGatherer)
        for gatherer in gatherers:
            self._take_over(gatherer)
        setattr(pc, _CREATE_DTLS_TRANSPORT, create_and_take_over)
        self._attached.add(pc)

    # internals

    def _take_over(self, gatherer: RTCIceGatherer) -> None:
        connection = getattr(gatherer, "_connection", None)
        if not isinstance(connection, Connection):
            raise PrivateApiChanged("RTCIceGatherer._connection is gone")
        if _GATHER_HOOK in vars(connection):
            raise ValueError("this ICE transport is already attached to an IceMux")
        if gatherer.state != "new":
            raise ValueError("attach() must come before the peer connection gathers candidates")

        async def get_component_candidates(
            component: int, addresses: list[str], timeout: int = 5
        ) -> list[Candidate]:
            return self._gather(connection, component)

        setattr(connection, _GATHER_HOOK, get_component_candidates)

        add_remote_candidate = connection.add_remote_candidate

        async def add_remote_candidate_later(candidate: Candidate | None) -> None:
            if candidate is None and self._tcp and self._state == "started":
                if connection not in self._end_tasks:
                    self._end_tasks[connection] = asyncio.create_task(
                        self._end_remote_candidates(connection, add_remote_candidate)
                    )
                return
            await add_remote_candidate(candidate)

        setattr(connection, _END_HOOK, add_remote_candidate_later)

    async def _end_remote_candidates(
        self,
        connection: Connection,
        add_remote_candidate: Callable[[Candidate | None], Awaitable[None]],
    ) -> None:
        try:
            await asyncio.sleep(self._tcp_end_delay)
            if connection in self._registered:  # not closed meanwhile
                await add_remote_candidate(None)
        finally:
            if self._end_tasks.get(connection) is asyncio.current_task():
                del self._end_tasks[connection]

    def _gather(self, connection: Connection, component: int) -> list[Candidate]:
        if self._state != "started":
            logger.warning("ICE gathering on an IceMux that is %s: no candidates", self._state)
            return []
        protocols = [
            _MuxProtocol(self, connection, sock, component) for sock in (*self._udp, *self._tcp)
        ]
        for protocol in protocols:
            protocol.socket.register(protocol, connection.local_username)
        local_protocols = getattr(connection, "_protocols", None)
        if not isinstance(local_protocols, list):
            raise PrivateApiChanged("aioice.Connection._protocols is gone")
        local_protocols.extend(protocols)
        self._registered.setdefault(connection, []).extend(protocols)
        return [p.local_candidate for p in protocols]

    def _forget(self, protocol: _MuxProtocol) -> None:
        protocols = self._registered.get(protocol.receiver)
        if protocols is not None and protocol in protocols:
            protocols.remove(protocol)
            if not protocols:
                del self._registered[protocol.receiver]
                task = self._end_tasks.pop(protocol.receiver, None)
                if task is not None:
                    task.cancel()

    async def _bind_all(
        self, addresses: Sequence[str], port: int, make: Callable[[str], _SocketT]
    ) -> list[_SocketT]:
        """Bind one socket per address, all on one port; with port 0, retry if one is taken."""
        for attempt in range(_BIND_ATTEMPTS if port == 0 else 1):
            bound: list[_SocketT] = []
            try:
                chosen = port
                for address in addresses:
                    sock = make(address)
                    await sock.bind(chosen)
                    bound.append(sock)
                    chosen = sock.port
                return bound
            except OSError:
                for sock in bound:
                    await sock.close()
                if port != 0 or attempt == _BIND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _cancel_end_tasks(self) -> None:
        tasks = list(self._end_tasks.values())
        self._end_tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_sockets(self) -> None:
        for sock in (*self._udp, *self._tcp):
            await sock.close()
