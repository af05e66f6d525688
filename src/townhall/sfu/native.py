"""The native piece of the packet path: a producer's fan-out in C (``_fastsend.c``).

``fanout`` takes one received packet to every consumer of a producer: for each consumer in the
steady state it makes the rewritten copy, protects it with libsrtp and queues it, and the copies
leave in one ``sendmmsg()``. The state it reads and updates is the Python objects' own
(``Consumer``, ``SequenceRewriter``, ``TwccSender``, ``PictureRewriter``), so whatever it leaves
to them (a layer switch, RED, padding, the first packet of a run, a transport without a native
route: TCP) goes through the consumer's ``send`` in the same loop. ``send`` protects and writes
the copies that Python built (retransmissions, padding, those left to Python) with one
``sendmmsg()`` at the end of each received datagram.

``receive`` goes one step earlier: the router hands it each received RTP packet's bytes and
the transport's layer table, and it does what ``parse_header`` and ``Producer.forward`` do
(reception statistics, packet cache, VP8 descriptor, audio level) before the same fan-out; what
it cannot read it leaves to that Python path.

``read`` is the shared UDP socket's reader (``_read.c``): one ``recvmmsg()`` for what waits,
each SRTP datagram from an address with a route unprotected in place, RTP given to ``receive``
without a call into Python and RTCP to the router, everything else to the socket's Python
``datagram_received``.

``twcc_feedback`` reads a consumer's transport feedback packet and runs the send-side estimate
(``twcc.py``, ``congestion.py``) over the history the fan-out writes.

``pip install`` builds it when a C compiler and the Python headers are there (setup.py marks it
optional); ``python -m townhall.sfu.native`` builds it next to this module. Without it, or with
``media_native_send = false``, the pure-Python path does all of it. The libsrtp it calls is
pylibsrtp's own (through the addresses of its cffi binding's ``srtp_protect`` and of each
session's ``srtp_t``), so the SRTP state stays the one aiortc keyed.
"""

from __future__ import annotations

import importlib
import socket
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from townhall.sfu import rtp, vp8

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("_fastsend.c", "_twcc.c", "_read.c", "_audio.c", "_fields.c"))

#: (srtp session address, plain RTP packet, packed sockaddr)
Held = tuple[int, bytes, bytes]
#: A transport's native route: (srtp session address, socket fd, packed sockaddr, the pylibsrtp
#: session, kept alive with it).
Route = tuple[int, int, bytes, Any]
#: ``fanout(consumers, data, header, layer, codec payload type, VP8 descriptor, now)``
Fanout = Callable[[list[Any], bytes, Any, int, int, Any, float], int]
#: ``receive(data, layers by SSRC, now)``: copies sent, or -1 for the Python path
Receive = Callable[[bytes, dict[int, Any], float], int]
#: What the socket's reader sends a publisher's transport feedback with: (the address of
#: libsrtp's srtp_protect_rtcp(), that of the transport's sending srtp session, the pylibsrtp
#: session, kept alive with it).
FeedbackSender = tuple[int, int, Any]
#: What the socket's reader needs to take a transport's SRTP to the router itself: (address of
#: the receiving srtp session, the transport's layers by SSRC, the router's counters, the
#: router's clock, ``Router.rtp_received`` and ``Router.rtcp_received`` for that transport,
#: its ``VideoAllocation``, what takes the estimate its transport feedback gave, the
#: publisher's arrivals (``TwccReceiver.arrivals``), and what it sends the publisher's
#: feedback with, or None for Python's tick to send it).
Plain = tuple[int, dict[int, Any], Any, Callable[[], float], Callable[[bytes], None],
              Callable[[bytes], None], Any, Callable[[float], bool | None], bytearray,
              FeedbackSender | None]
#: ``twcc_feedback(data, history, state, parameters)``: the estimate in bit/s, or None
TwccFeedback = Callable[[bytes, bytearray, bytearray, bytes], float | None]


class NativeSend:
    """The compiled module and what calling it needs."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self._send: Callable[[int, int, list[Held]], int] = module.send
        self.protect = self._address("srtp_protect")
        module.setup(self.protect)
        self.unprotect = self._address("srtp_unprotect")
        self.unprotect_rtcp = self._address("srtp_unprotect_rtcp")
        #: ``read(fd, unprotect, unprotect_rtcp, routes, by_address, deliver, failed, held,
        #: flush, delay, holder, wakeups)``: the shared UDP socket's reader callback
        #: (``_read.c``); ``wakeups`` (``beat.Wakeups`` or None) is ridden after the datagrams.
        self.read: Callable[..., int] = module.read
        #: The socket option that turns on the kernel's receive times ``read`` looks for.
        self.so_timestampns: int = module.SO_TIMESTAMPNS
        #: Totals: (datagrams ``read`` dropped as longer than its buffer, and as refused by
        #: libsrtp; transport feedback packets it sent publishers, and those it could not).
        self.read_counts: Callable[[], tuple[int, int, int, int]] = module.read_counts
        self.fanout: Fanout = module.fanout
        #: How many copies ``fanout`` sent since the last call (for the delay histogram).
        self.take_sent: Callable[[], int] = module.take_sent
        #: Totals: (copies ``fanout`` made in C, consumers it left to their Python ``send``,
        #: copies lost unsent: the socket was full, the send failed or libsrtp refused).
        self.counts: Callable[[], tuple[int, int, int]] = module.counts

    @staticmethod
    def _address(function: str) -> int:
        """The address of one of libsrtp's functions in pylibsrtp's binding."""
        return int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, function)))

    def send(self, fd: int, held: list[Held]) -> int:
        """Protect and send ``held``; returns how many datagrams the socket took."""
        return self._send(fd, self.protect, held)

    @staticmethod
    def session(session: Any) -> int:
        """The address of a pylibsrtp ``Session``'s ``srtp_t`` (the session must stay alive)."""
        return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))

    @staticmethod
    def feedback_sender(session: Any) -> FeedbackSender:
        """What the socket's reader needs to send a publisher its transport feedback itself,
        protected with ``session`` (the transport's sending pylibsrtp ``Session``)."""
        return (NativeSend._address("srtp_protect_rtcp"), NativeSend.session(session), session)

    @staticmethod
    def route(session: Any, fd: int, sockaddr: bytes) -> Route:
        """What ``fanout`` needs to protect and send a transport's copies itself."""
        return (NativeSend.session(session), fd, sockaddr, session)

    @staticmethod
    def sockaddr(address: tuple[Any, ...]) -> bytes | None:
        """A packed ``struct sockaddr_in``/``sockaddr_in6`` for (host, port), or None."""
        host, port = str(address[0]), int(address[1])
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
            return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)
        except OSError:
            pass
        try:
            packed = socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            return None
        return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed
                + struct.pack("=I", 0))


_loaded: NativeSend | None = None


def load() -> NativeSend | None:
    """The native piece if it has been built, else None."""
    global _loaded
    if _loaded is None:
        try:
            module = importlib.import_module("townhall.sfu._fastsend")
        except ImportError:
            return None
        _loaded = NativeSend(module)
    return _loaded


def fanout() -> Fanout | None:
    """The native fan-out if the piece has been built, else None."""
    native = load()
    return None if native is None else native.fanout


def receive(speaking_level: int) -> Receive | None:
    """``Producer.forward`` in C from a received packet's bytes, if the piece has been built.

    For a packet whose SSRC is in the table: the header, the layer's reception statistics,
    packet cache and byte count, the VP8 descriptor and keyframe size (``producer.descriptor`` is
    set only before a consumer's own ``send``, which reads it), the audio level (louder than
    ``speaking_level`` counts as speech), then the fan-out.
    Anything it cannot read (a malformed packet, an unknown SSRC, an unreadable VP8 descriptor)
    it leaves untouched and returns -1, for the Python path to do.
    """
    native = load()
    if native is None:
        return None
    native.module.setup(native.protect, rtp.RtpHeader, vp8.Descriptor, speaking_level)
    function: Receive = native.module.receive
    return function


def twcc_feedback() -> tuple[TwccFeedback, int] | None:
    """The transport feedback read and the send-side estimate in C (``_twcc.c``), and the size
    of the state it keeps per transport; None without the piece."""
    native = load()
    if native is None:
        return None
    return native.module.twcc_feedback, int(native.module.TWCC_STATE_SIZE)


def twcc_take() -> Callable[[bytearray, float], list[bytes]] | None:
    """``TwccReceiver.feedback`` in C (``_twcc.c``, what the socket's reader calls); None
    without the piece."""
    native = load()
    return None if native is None else native.module.twcc_take  # type: ignore[no-any-return]


def build(directory: Path | None = None) -> Path:
    """Compile the C sources into ``directory`` (default: next to this module, where
    :func:`load` finds it); returns the shared library's path."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = (directory or SOURCES[0].parent) / ("_fastsend" + suffix)
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    command = [
        *compiler, "-O2", "-shared", "-fPIC", "-Wall", "-ffp-contract=off",
        f"-I{sysconfig.get_paths()['include']}", *map(str, SOURCES), "-lm", "-o", str(target),
    ]
    subprocess.run(command, check=True)
    return target


if __name__ == "__main__":
    print(build())
    sys.exit(0 if load() is not None else 1)
