"""The optional native piece of the packet path: libsrtp protect + ``sendmmsg`` in C.

Python builds every consumer's copy of a forwarded packet; the UDP socket holds the copies while
one received datagram is handled and then hands them all to ``_fastsend.send``, which protects
each with libsrtp and writes them with one ``sendmmsg()`` (``_fastsend.c``). It is not built by
default: ``python -m townhall.sfu.native`` compiles it next to this module (a C compiler and the
Python headers are needed). Without it, or with ``media_native_send = false``, the pure-Python
path is used. The libsrtp it calls is pylibsrtp's own (through the addresses of its cffi
binding's ``srtp_protect`` and of each session's ``srtp_t``), so the SRTP state stays the one
aiortc keyed.
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

SOURCE = Path(__file__).with_name("_fastsend.c")

#: (srtp session address, plain RTP packet, packed sockaddr)
Held = tuple[int, bytes, bytes]


class NativeSend:
    """The compiled module and what calling it needs."""

    def __init__(self, module: Any) -> None:
        self._send: Callable[[int, int, list[Held]], int] = module.send
        self.protect = int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib,
                                                                            "srtp_protect")))

    def send(self, fd: int, held: list[Held]) -> int:
        """Protect and send ``held``; returns how many datagrams the socket took."""
        return self._send(fd, self.protect, held)

    @staticmethod
    def session(session: Any) -> int:
        """The address of a pylibsrtp ``Session``'s ``srtp_t`` (the session must stay alive)."""
        return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))

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


def load() -> NativeSend | None:
    """The native piece if it has been built, else None."""
    try:
        module = importlib.import_module("townhall.sfu._fastsend")
    except ImportError:
        return None
    return NativeSend(module)


def build(directory: Path | None = None) -> Path:
    """Compile ``_fastsend.c`` into ``directory`` (default: next to this module, where
    :func:`load` finds it); returns the shared library's path."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = (directory or SOURCE.parent) / ("_fastsend" + suffix)
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    command = [
        *compiler, "-O2", "-shared", "-fPIC", "-Wall",
        f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(target),
    ]
    subprocess.run(command, check=True)
    return target


if __name__ == "__main__":
    print(build())
    sys.exit(0 if load() is not None else 1)
