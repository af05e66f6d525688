"""The numbers the native piece reads and writes for every copy or datagram, and where they are
kept.

``SequenceRewriter``, ``PictureRewriter``, ``TwccSender`` and ``Consumer`` take these classes as
their base; so do the router's ``Counters`` and the ICE connection, whose counts the socket's
native reader adds to, the UDP socket, whose ``_holding`` it sets, and ``beat.Wakeups``, whose
``due`` it reads at every wake-up. With the native piece built they are its C types
(``_fields.c``): each number is a field of a C struct, which Python reads and writes as an
attribute of the same name and C reads and writes directly, with no int object to find or make
per copy. Without it they are the plain classes below, with the same attributes in
``__slots__``.

A field holds what its annotation says; in C, storing anything else raises ``TypeError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


class _SequenceFields:
    __slots__ = ("_last_in_seq", "_last_out_seq", "_last_out_ts", "_last_sent_at", "_seq_offset",
                 "_started", "_ts_offset")
    _started: bool
    _seq_offset: int
    _ts_offset: int
    _last_in_seq: int
    _last_out_seq: int
    _last_out_ts: int
    _last_sent_at: float


class _PictureFields:
    __slots__ = ("_last_picture_id", "_last_tl0", "_picture_offset", "_started", "_tl0_offset",
                 "active")
    _started: bool
    active: bool
    _picture_offset: int
    _tl0_offset: int
    _last_picture_id: int
    _last_tl0: int


class _TwccFields:
    __slots__ = ("_sequence", "extension_id")
    _sequence: int
    extension_id: int


class _CountersFields:
    __slots__ = ("bytes_forwarded", "packets_forwarded", "packets_received")
    packets_received: int
    packets_forwarded: int
    bytes_forwarded: int


class _ReceivedFields:
    __slots__ = ("received",)
    received: int


class _HoldingFields:
    __slots__ = ("_holding",)
    _holding: bool


class _WakeupsFields:
    __slots__ = ("due",)
    due: float


class _ConsumerFields:
    __slots__ = ("layer", "octets", "packets", "padding", "paused", "target")
    paused: bool
    layer: int
    target: int
    padding: int
    packets: int
    octets: int


if TYPE_CHECKING:
    SequenceFields = _SequenceFields
    PictureFields = _PictureFields
    TwccFields = _TwccFields
    ConsumerFields = _ConsumerFields
    CountersFields = _CountersFields
    ReceivedFields = _ReceivedFields
    HoldingFields = _HoldingFields
    WakeupsFields = _WakeupsFields
else:
    try:
        from townhall.sfu import _fastsend as _native
    except ImportError:
        _native = None
    SequenceFields = getattr(_native, "SequenceFields", _SequenceFields)
    PictureFields = getattr(_native, "PictureFields", _PictureFields)
    TwccFields = getattr(_native, "TwccFields", _TwccFields)
    ConsumerFields = getattr(_native, "ConsumerFields", _ConsumerFields)
    CountersFields = getattr(_native, "CountersFields", _CountersFields)
    ReceivedFields = getattr(_native, "ReceivedFields", _ReceivedFields)
    HoldingFields = getattr(_native, "HoldingFields", _HoldingFields)
    WakeupsFields = getattr(_native, "WakeupsFields", _WakeupsFields)


def in_c() -> bool:
    """Whether the numbers are C struct fields (the native piece is built)."""
    return SequenceFields is not _SequenceFields
