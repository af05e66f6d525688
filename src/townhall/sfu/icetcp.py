"""ICE-TCP streams: RFC 4571 framing on accepted TCP connections (RFC 6544 passive side).

The listener knows nothing about ICE. It accepts TCP connections, cuts each byte stream into
frames (a 2-byte big-endian length, then that many bytes) and hands every frame to a callback
together with the peer's address. The callback says whether the stream is worth keeping: the
first frame of a stream must be routed to an ICE connection, otherwise the stream is closed.
Streams that send nothing routable within ``first_frame_timeout`` seconds are closed too.

Sending goes to the stream whose peer has the given address; frames for an unknown address, or
for a stream whose write buffer is already over ``max_write_buffer`` bytes (a peer that reads
too slowly), are dropped as a lossy UDP path would drop them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from townhall import beat

logger = logging.getLogger(__name__)

Address = tuple[str, int]

_LENGTH = struct.Struct("!H")
MAX_FRAME_SIZE = 0xFFFF


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 2-byte length (RFC 4571 section 2)."""
    if len(payload) > MAX_FRAME_SIZE:
        raise ValueError("RFC 4571 frame is longer than 65535 bytes")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Cut a TCP byte stream into RFC 4571 frames, keeping any partial frame for later."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        offset = 0
        size = len(self._buffer)
        while size - offset >= 2:
            (length,) = _LENGTH.unpack_from(self._buffer, offset)
            end = offset + 2 + length
            if end > size:
                break
            frames.append(bytes(self._buffer[offset + 2 : end]))
            offset = end
        if offset:
            del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not form a whole frame yet."""
        return len(self._buffer)


#: Called for every frame with the peer's address; returns whether to keep the stream open.
FrameHandler = Callable[[bytes, Address], bool]
#: Called once when a stream that had been accepted is gone.
StreamClosedHandler = Callable[[Address], None]


class _Stream(asyncio.Protocol):
    def __init__(self, listener: TcpFrameListener) -> None:
        self._listener = listener
        self._decoder = FrameDecoder()
        self._timeout: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.confirmed = False
        self._wakeups: beat.Wakeups | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or len(peer) < 2 or self._listener.closed:
            transport.close()
            return
        self.transport = transport
        self.peer = (str(peer[0]), int(peer[1]))
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(self._listener.first_frame_timeout, self._expire)
        # a meeting whose media all comes over TCP wakes the beats too (see beat.Wakeups)
        self._wakeups = beat.wakeups(loop)
        self._listener.stream_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.transport is None or self.transport.is_closing():
            return
        for frame in self._decoder.feed(data):
            if not self._listener.on_frame(frame, self.peer):
                logger.debug("ICE-TCP stream from %s closed: frame not routable", self.peer)
                self.close()
                return
            if not self.confirmed:
                self.confirmed = True
                self._cancel_timeout()
        wakeups = self._wakeups
        if wakeups is not None and wakeups.due <= time.monotonic():
            wakeups.ride()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timeout()
        if self.peer is not None:
            self._listener.stream_closed(self)

    def send(self, payload: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > self._listener.max_write_buffer:
            return False
        transport.write(encode_frame(payload))
        return True

    def close(self) -> None:
        self._cancel_timeout()
        if self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        self._timeout = None
        if not self.confirmed:
            logger.debug("ICE-TCP stream from %s closed: no STUN request in time", self.peer)
            self.close()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None


class TcpFrameListener:
    """One listening TCP socket whose accepted streams carry RFC 4571 frames."""

    def __init__(
        self,
        on_frame: FrameHandler,
        on_stream_closed: StreamClosedHandler,
        *,
        first_frame_timeout: float = 10.0,
        max_write_buffer: int = 1 << 20,
    ) -> None:
        self.on_frame = on_frame
        self._on_stream_closed = on_stream_closed
        self.first_frame_timeout = first_frame_timeout
        self.max_write_buffer = max_write_buffer
        self._server: asyncio.Server | None = None
        self._streams: dict[Address, _Stream] = {}
        self.closed = False

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Stream(self), host=host, port=port, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    def send(self, payload: bytes, addr: Address) -> bool:
        """Send one frame on the stream from ``addr``; False if it was dropped."""
        stream = self._streams.get(addr)
        if stream is None:
            return False
        return stream.send(payload)

    def close_stream(self, addr: Address) -> None:
        stream = self._streams.get(addr)
        if stream is not None:
            stream.close()

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def stream_opened(self, stream: _Stream) -> None:
        assert stream.peer is not None
        previous = self._streams.get(stream.peer)
        if previous is not None:  # cannot happen with a live TCP 4-tuple; be safe anyway
            previous.close()
        self._streams[stream.peer] = stream

    def stream_closed(self, stream: _Stream) -> None:
        assert stream.peer is not None
        if self._streams.get(stream.peer) is stream:
            del self._streams[stream.peer]
            self._on_stream_closed(stream.peer)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for stream in list(self._streams.values()):
            stream.close()
        if server is not None:
            await server.wait_closed()
