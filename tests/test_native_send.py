"""The optional native piece protects packets with the session's libsrtp and sends them all."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from pylibsrtp import Policy, Session

from townhall.sfu.native import NativeSend, build


def _native(tmp_path: Path) -> NativeSend:
    library = build(tmp_path)
    spec = importlib.util.spec_from_file_location("_fastsend", library)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return NativeSend(module)


def _sessions() -> tuple[Session, Session]:
    key = os.urandom(44)
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    return (Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)),
            Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)))


@contextlib.contextmanager
def _receiver_and_sender() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A bound receiving socket (2 s timeout) and a sending one, both UDP on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        yield receiver, sender


def test_every_packet_arrives_protected_for_its_own_session_and_address(tmp_path: Path) -> None:
    native = _native(tmp_path)
    (tx_a, rx_a), (tx_b, rx_b) = _sessions(), _sessions()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
        sender.bind(("127.0.0.1", 0))
        packets = [struct.pack("!BBHII", 0x80, 96, n, 960 * n, 7) + os.urandom(40 + n)
                   for n in range(300)]  # more than one sendmmsg batch
        held = [(native.session(tx_a if n % 2 == 0 else tx_b), p,
                 native.sockaddr((a if n % 2 == 0 else b).getsockname()) or b"")
                for n, p in enumerate(packets)]
        assert native.send(sender.fileno(), held) == len(packets)
        assert [rx_a.unprotect(a.recv(2048)) for _ in range(150)] == packets[0::2]
        assert [rx_b.unprotect(b.recv(2048)) for _ in range(150)] == packets[1::2]


def test_a_packet_too_long_to_protect_is_skipped_not_sent_and_counted(tmp_path: Path) -> None:
    native = _native(tmp_path)
    unsent = native.counts()[2]
    tx, rx = _sessions()
    with _receiver_and_sender() as (receiver, sender):
        address = native.sockaddr(receiver.getsockname())
        assert address is not None
        small = struct.pack("!BBHII", 0x80, 96, 1, 960, 7) + b"ok"
        huge = struct.pack("!BBHII", 0x80, 96, 2, 1920, 7) + bytes(1400)
        held = [(native.session(tx), huge, address), (native.session(tx), small, address)]
        assert native.send(sender.fileno(), held) == 1
        assert rx.unprotect(receiver.recv(2048)) == small
    assert native.counts()[2] == unsent + 1


def test_a_datagram_the_socket_refuses_is_counted_unsent_and_the_rest_still_go(
    tmp_path: Path,
) -> None:
    native = _native(tmp_path)
    unsent = native.counts()[2]
    tx, rx = _sessions()
    with _receiver_and_sender() as (receiver, sender):
        address = native.sockaddr(receiver.getsockname())
        elsewhere = native.sockaddr(("::1", receiver.getsockname()[1]))  # not for an IPv4 socket
        assert address is not None and elsewhere is not None
        packets = [struct.pack("!BBHII", 0x80, 96, n, 960 * n, 7) + b"media" for n in range(3)]
        held = [(native.session(tx), packets[0], address),
                (native.session(tx), packets[1], elsewhere),
                (native.session(tx), packets[2], address)]
        assert native.send(sender.fileno(), held) == 2
        assert [rx.unprotect(receiver.recv(2048)) for _ in range(2)] == [packets[0], packets[2]]
    assert native.counts()[2] == unsent + 1


def test_addresses_pack_as_the_kernel_reads_them() -> None:
    v4 = NativeSend.sockaddr(("127.0.0.1", 5004))
    assert v4 is not None and len(v4) == 16 and v4[2:4] == b"\x13\x8c" and v4[4:8] == bytes(
        [127, 0, 0, 1])
    v6 = NativeSend.sockaddr(("::1", 5004))
    assert v6 is not None and len(v6) == 28
    assert NativeSend.sockaddr(("not-an-address", 1)) is None
