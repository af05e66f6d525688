"""One ICE+DTLS+SRTP connection to a participant, built on an aiortc ``RTCPeerConnection``.

aiortc negotiates (SDP, ICE, DTLS); the SFU takes the media over at the DTLS transport: decrypted
RTP and RTCP bytes are handed to a ``MediaHandler`` instead of aiortc's receivers, and forwarded
packets are protected and written to the nominated ICE pair directly, without an ``await`` per
packet. **Every use of aiortc's private attributes is in this module** (see
``PRIVATE_ATTRIBUTES``; ``tests/test_transport_contract.py`` fails if an upgrade removes one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pylibsrtp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InvalidStateError
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from townhall.errors import BadRequest, MediaClosed
from townhall.sfu import audio_sdp, rejected_sdp, simulcast_sdp, teardown, twcc
from townhall.sfu.delay import ForwardingDelay
from townhall.sfu.ice import MediaPath, media_path
from townhall.sfu.native import NativeSend, Route

logger = logging.getLogger(__name__)

#: (class, attribute) pairs this module relies on, checked by the contract test.
PRIVATE_ATTRIBUTES = (
    ("aiortc.rtcdtlstransport.RTCDtlsTransport", "_handle_rtp_data"),
    ("aiortc.rtcdtlstransport.RTCDtlsTransport", "_handle_rtcp_data"),
    ("aiortc.rtcdtlstransport.RTCDtlsTransport", "_tx_srtp"),
    ("aiortc.rtcdtlstransport.RTCDtlsTransport", "_rx_srtp"),
    ("aiortc.rtcicetransport.RTCIceTransport", "_connection"),
    ("aioice.ice.Connection", "_nominated"),
    ("aiortc.rtcrtpsender.RTCRtpSender", "_ssrc"),
    ("aiortc.rtcrtpsender.RTCRtpSender", "_run_rtcp"),
    ("aiortc.rtcrtpsender.RTCRtpSender", "_RTCRtpSender__rtcp_started"),
    ("aiortc.rtcrtpsender.RTCRtpSender", "_RTCRtpSender__rtcp_exited"),
    ("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_RTCRtpReceiver__remote_bitrate_estimator"),
    ("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_run_rtcp"),
    ("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_RTCRtpReceiver__rtcp_started"),
    ("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_RTCRtpReceiver__rtcp_exited"),
    ("aiortc.rtcrtpreceiver.RTCRtpReceiver", "_RTCRtpReceiver__decoder_queue"),
    ("pylibsrtp.Session", "_srtp"),
    ("aiortc.rtcpeerconnection.RTCPeerConnection", "_RTCPeerConnection__certificates"),
    ("aiortc.rtcpeerconnection.RTCPeerConnection",
     "_RTCPeerConnection__currentRemoteDescription"),
)

#: Seconds after a transport closed that its peer connection is taken apart
#: (``teardown.py``): by then nothing touches what is under it.
TAKE_APART_AFTER = 5.0
#: libsrtp's own buffer size for one packet in pylibsrtp, and the most protection may add.
_SRTP_BUFFER = 1500
_SRTP_MAX_TRAILER = 4 + 16 + 128

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


class MediaHandler(Protocol):
    """Receives what arrives on a transport."""

    def rtp_received(self, transport: Transport, data: bytes) -> None: ...

    def rtcp_received(self, transport: Transport, data: bytes) -> None: ...

    def transport_ready(self, transport: Transport) -> None: ...

    def transport_closed(self, transport: Transport) -> None: ...


@dataclass(frozen=True, slots=True)
class Codec:
    mime_type: str  # "audio/opus", "video/VP8", "video/H264"
    clock_rate: int
    payload_type: int
    channels: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        return self.mime_type.split("/", 1)[0]

    def matches(self, other: Codec) -> bool:
        """Same codec (payload types may differ); H.264 must also agree on its profile."""
        if self.mime_type.lower() != other.mime_type.lower() or self.clock_rate != other.clock_rate:
            return False
        if self.mime_type.lower() == "video/h264":
            mine, theirs = dict(self.parameters), dict(other.parameters)
            return (
                mine.get("packetization-mode", "0") == theirs.get("packetization-mode", "0")
                and mine.get("profile-level-id", "")[:4].lower()
                == theirs.get("profile-level-id", "")[:4].lower()
            )
        return True


@dataclass(frozen=True, slots=True)
class IncomingTrack:
    """What negotiation says about one track a participant sends."""

    mid: str
    kind: str
    codec: Codec
    ssrcs: tuple[int, ...]
    mid_extension: int | None
    audio_level_extension: int | None
    #: SSRC the server uses as sender of RTCP about this track.
    rtcp_ssrc: int
    #: Payload type of RED (RFC 2198) over ``codec``, when the answer accepted it.
    red_payload_type: int | None = None
    #: Simulcast: the rids of the layers, lowest first (empty without simulcast).
    rids: tuple[str, ...] = ()
    rid_extension: int | None = None


class Slot:
    """One send-only transceiver of a transport, carrying one consumer at a time."""

    __slots__ = ("abs_send_time", "codec", "payload_type", "red_payload_type", "ssrc",
                 "transceiver", "twcc")

    def __init__(self, transceiver: Any, codec: Codec) -> None:
        self.transceiver = transceiver
        self.codec = codec
        #: The SSRC the server sends with (aiortc picks it when the sender is made; it never
        #: changes). Read on every forwarded packet, so kept here.
        self.ssrc = int(transceiver.sender._ssrc)
        #: The payload type the far end accepted; None until negotiated (or if refused).
        self.payload_type: int | None = None
        #: The far end's payload type for RED over ``payload_type``, if it accepted RED.
        self.red_payload_type: int | None = None
        #: The abs-send-time extension id the far end accepted (for its bandwidth estimate).
        self.abs_send_time: int | None = None
        #: The transport-wide congestion control extension id the far end accepted.
        self.twcc: int | None = None

    @property
    def mid(self) -> str | None:
        # None too once its closed connection is taken apart (``teardown.py``)
        mid = getattr(self.transceiver, "mid", None)
        return None if mid is None else str(mid)


class _SilentTrack(MediaStreamTrack):  # type: ignore[misc]
    """A track for a server-side sender: it never yields a frame, so no encoder ever runs."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise asyncio.CancelledError


async def _quiet_rtcp(party: Any, prefix: str) -> None:
    """Replaces the RTCP loop of an aiortc sender or receiver (``prefix``: its class's private
    attribute prefix). A sender's reports would describe packets aiortc never sent; a receiver's
    loop wakes every 0.5–1.5 s to report streams aiortc never sees (the router reports them)."""
    getattr(party, f"{prefix}__rtcp_started").set()
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        pass
    finally:
        getattr(party, f"{prefix}__rtcp_exited").set()


def _no_rtcp_loop(party: Any, prefix: str) -> None:
    """``_quiet_rtcp`` in place of ``party``'s RTCP loop (set before aiortc starts it)."""
    setattr(party, "_run_rtcp", functools.partial(_quiet_rtcp, party, prefix))  # noqa: B010


def _no_decoder(receiver: Any) -> None:
    """Make the decoder thread that aiortc starts for each received track end at once.

    The router takes every packet before aiortc's receiver sees one, so that thread would wait
    on its queue for the whole call: in a 50-person meeting, a hundred idle threads. Its queue
    here already holds the value that tells it to stop (set before aiortc starts it); stopping
    the receiver later sends that value again and joins a thread that has ended."""
    stopped: queue.Queue[None] = queue.Queue()
    stopped.put(None)
    setattr(receiver, "_RTCRtpReceiver__decoder_queue", stopped)  # noqa: B010


def _drop_estimator(transceiver: Any) -> None:
    """Free the receive-side bandwidth estimator aiortc gives every video transceiver.

    The SFU takes packets before aiortc's receiver sees them and estimates bandwidth itself,
    so the estimator is never used; it holds a 1,000-slot rate window of small objects, which
    made three quarters of a meeting's objects (one per participant pair) and so most of what
    every full garbage collection had to walk. aiortc skips a receiver's estimator that is None.
    """
    setattr(transceiver.receiver,  # noqa: B010
            "_RTCRtpReceiver__remote_bitrate_estimator", None)


def _sending_transceiver(pc: RTCPeerConnection, codec: Codec) -> Any:
    """A new send-only transceiver of ``pc`` for ``codec``, on a track that never yields."""
    transceiver = pc.addTransceiver(_SilentTrack(codec.kind), direction="sendonly")
    transceiver.setCodecPreferences(
        [c for c in _forwardable(codec.kind) if codec.matches(_codec_of_capability(c))]
    )
    # aiortc's own sender reports would describe packets it never sent.
    _no_rtcp_loop(transceiver.sender, "_RTCRtpSender")
    _drop_estimator(transceiver)
    return transceiver


def _codec_of(parameters: Any) -> Codec:
    return Codec(
        mime_type=parameters.mimeType,
        clock_rate=parameters.clockRate,
        payload_type=parameters.payloadType,
        channels=parameters.channels,
        parameters=tuple(sorted((str(k), str(v)) for k, v in parameters.parameters.items())),
    )


def _codec_of_capability(capability: Any) -> Codec:
    return Codec(
        mime_type=capability.mimeType,
        clock_rate=capability.clockRate,
        payload_type=0,
        channels=capability.channels,
        parameters=tuple(sorted((str(k), str(v)) for k, v in capability.parameters.items())),
    )


def _forwardable(kind: str) -> list[Any]:
    """aiortc's codecs for ``kind`` that the SFU forwards: no RTX (NACKs are answered from the
    packet cache, and producers then retransmit on the original SSRC)."""
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs
            if c.mimeType.lower() in ("audio/opus", "video/vp8", "video/h264")]


def _extension_id(media: Any, uri: str) -> int | None:
    """The id a parsed media section gives the header extension ``uri`` (one-byte ids only)."""
    if media is None:
        return None
    for extension in media.rtp.headerExtensions:
        if extension.uri == uri and 0 < extension.id < 15:
            return int(extension.id)
    return None


def _srtp_call(session: Any, function: Any, trailer: int) -> Callable[[bytes], bytes]:
    """``session.protect`` (or another of its four calls) as one lean closure.

    pylibsrtp's methods allocate and check on every call; the packet path calls libsrtp through
    the same cffi binding with a buffer and a length cell of its own, made once. ``session``
    stays referenced, so libsrtp's state lives as long as the closure.
    """
    srtp = session._srtp[0]
    buffer = _srtp_ffi.new("char[]", _SRTP_BUFFER)
    view = _srtp_ffi.buffer(buffer)
    size = _srtp_ffi.new("int *")
    limit = _SRTP_BUFFER - trailer
    errors: Mapping[int, str] = getattr(pylibsrtp, "ERRORS", {})

    def call(data: bytes, _session: Any = session) -> bytes:
        length = len(data)
        if length > limit:
            raise pylibsrtp.Error("packet is too long")
        view[0:length] = data
        size[0] = length
        status = function(srtp, buffer, size)
        if status:
            raise pylibsrtp.Error(errors.get(status, f"libsrtp error {status}"))
        return view[0:size[0]]  # type: ignore[no-any-return]

    return call


def _srtp_sender(
    session: Any, sendto: Callable[[bytes, Any], None], remote: Any,
    delay: ForwardingDelay | None, name: str, protect: Any = _srtp_lib.srtp_protect,
) -> Callable[[bytes], bool]:
    """``Transport.send_rtp`` once the transport is linked (or ``send_rtcp``, with libsrtp's
    ``srtp_protect_rtcp`` for ``protect``): protect with libsrtp and write to the socket in
    one call of its own (see ``_srtp_call``)."""
    srtp = session._srtp[0]
    buffer = _srtp_ffi.new("char[]", _SRTP_BUFFER)
    view = _srtp_ffi.buffer(buffer)
    size = _srtp_ffi.new("int *")
    limit = _SRTP_BUFFER - _SRTP_MAX_TRAILER

    def send(data: bytes, _session: Any = session) -> bool:
        length = len(data)
        if length > limit:
            logger.debug("%s: packet too long to protect (%d bytes)", name, length)
            return False
        view[0:length] = data
        size[0] = length
        status = protect(srtp, buffer, size)
        if status:
            logger.debug("%s: SRTP protect failed: libsrtp error %d", name, status)
            return False
        sendto(view[0:size[0]], remote)
        if delay is not None:
            delay.sent()
        return True

    return send


def _held_sender(
    session: Any, hold: Callable[[tuple[int, bytes, bytes]], None], sockaddr: bytes
) -> Callable[[bytes], bool]:
    """``Transport.send_rtp`` with the native piece: the socket protects and sends the packet
    with the rest of the fan-out (``native.py``)."""
    srtp = NativeSend.session(session)

    def send_rtp(data: bytes, _session: Any = session) -> bool:
        hold((srtp, data, sockaddr))
        return True

    return send_rtp


def _primary(media: Any) -> Any:
    """A media section's first codec that is not RED (RED carries it)."""
    return next((c for c in media.rtp.codecs if c.mimeType.lower() != "audio/red"),
                media.rtp.codecs[0])


def parse_sdp(text: str) -> Any:
    try:
        return aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises assorted errors on bad SDP
        raise BadRequest(f"malformed SDP: {exc}") from None


def _keep_fingerprints(pc: RTCPeerConnection) -> None:
    """Compute the peer connection's certificate fingerprints once.

    aiortc computes three digests of its certificate afresh for every section of every offer and
    answer: with 50 people an offer has 98 sections, and the digests took 6 % of the server's
    CPU while people joined. A certificate's fingerprints never change.
    """
    for certificate in getattr(pc, "_RTCPeerConnection__certificates", ()):
        fingerprints = tuple(certificate.getFingerprints())
        setattr(certificate, "getFingerprints",  # noqa: B010
                lambda fingerprints=fingerprints: list(fingerprints))


class Transport:
    """An RTCPeerConnection whose media the SFU handles itself."""

    # ``route`` is read for every copy the native fan-out makes: a slot is found at a fixed
    # offset, an attribute in the instance's dict by a lookup each time (2 % of the server's
    # CPU with 209 receivers). The rest stays in the dict (tests replace methods on instances).
    __slots__ = ("__dict__", "__weakref__", "route")

    def __init__(
        self,
        handler: MediaHandler,
        attach: Callable[[RTCPeerConnection], None] | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        _keep_fingerprints(self.pc)
        if attach is not None:
            attach(self.pc)
        self._handler = handler
        self._hooked: set[int] = set()
        self._dtls: Any = None
        self._ready = False
        #: Set by the first ``close``: the closing every caller waits for.
        self._closing: asyncio.Future[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._slots: list[Slot] = []
        #: Whether this transport's descriptions offer and accept RED for Opus.
        self.red = True
        #: Set once SRTP is ready and the nominated pair is on an IceMux socket: the packet path
        #: then goes straight between the socket and the handler (see ``_link``).
        self._path: MediaPath | None = None
        #: Where the native fan-out sends this transport's copies itself (``native.py``); None
        #: when it cannot (no native piece, an ICE-TCP or aioice pair, not linked yet).
        self.route: Route | None = None
        self.pc.on("connectionstatechange", self._state_changed)

    # -- negotiation -----------------------------------------------------------------------

    async def answer(self, offer: str) -> tuple[str, list[IncomingTrack]]:
        """Accept a participant's offer of tracks to publish; returns the answer and the tracks."""
        description = parse_sdp(offer)
        if not any(m.kind in ("audio", "video") for m in description.media):
            raise BadRequest("malformed SDP: no audio or video section")
        self._check_negotiable()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for transceiver in self.pc.getTransceivers():
                _drop_estimator(transceiver)
                _no_rtcp_loop(transceiver.receiver, "_RTCRtpReceiver")
                _no_decoder(transceiver.receiver)
                transceiver.direction = "recvonly"
                transceiver.setCodecPreferences(_forwardable(transceiver.kind))
            created = await self.pc.createAnswer()
            await self.pc.setLocalDescription(RTCSessionDescription(
                sdp=audio_sdp.complete_answer(offer, created.sdp, self.red), type="answer"))
        except BadRequest:
            raise
        except Exception as exc:
            raise BadRequest(f"cannot negotiate: {exc}") from None
        self._hook()
        answer = self.pc.localDescription.sdp
        parsed = parse_sdp(answer)
        # Simulcast is accepted for VP8 only: layer switches wait for VP8 keyframes.
        layers = [
            offered if offered is not None and local.port != 0 and local.rtp.codecs
            and _primary(local).mimeType.lower() == "video/vp8" else None
            for offered, local in zip(simulcast_sdp.offered(offer), parsed.media, strict=False)
        ]
        if any(layers):
            answer = simulcast_sdp.complete_answer(answer, layers)
        if twcc.PUBLISHER_FEEDBACK:  # the router tells it when its video arrived
            answer = twcc.complete_answer(answer, offer)
        answer = rejected_sdp.rejected_as_offered(offer, answer)
        return answer, self._incoming(description, parsed, layers)

    def _incoming(self, offer: Any, answer: Any,
                  layers: list[simulcast_sdp.OfferedSimulcast | None]) -> list[IncomingTrack]:
        senders = {t.mid: t.sender for t in self.pc.getTransceivers()}
        tracks = []
        for index, (remote, local) in enumerate(zip(offer.media, answer.media, strict=False)):
            if remote.kind not in ("audio", "video") or local.port == 0:
                continue
            if remote.direction not in ("sendrecv", "sendonly") or not local.rtp.codecs:
                continue
            simulcast = layers[index] if index < len(layers) else None
            mid = remote.rtp.muxId
            extensions = {e.uri: e.id for e in local.rtp.headerExtensions}
            rtx = {g.items[1] for g in remote.ssrc_group
                   if g.semantic == "FID" and len(g.items) > 1}
            tracks.append(
                IncomingTrack(
                    mid=mid,
                    kind=remote.kind,
                    codec=_codec_of(_primary(local)),
                    # With simulcast each layer's SSRC is learnt from its rid.
                    ssrcs=() if simulcast is not None else
                    tuple(s.ssrc for s in remote.ssrc if s.ssrc not in rtx),
                    mid_extension=extensions.get(MID_URI),
                    audio_level_extension=extensions.get(AUDIO_LEVEL_URI),
                    rtcp_ssrc=senders[mid]._ssrc if mid in senders else 1,
                    red_payload_type=audio_sdp.red_payload_type(
                        local, _primary(local).payloadType),
                    rids=simulcast.rids if simulcast is not None else (),
                    rid_extension=simulcast.rid_extension if simulcast is not None else None,
                )
            )
        return tracks

    def add_outgoing(self, codec: Codec) -> Slot:
        """A new send-only transceiver for ``codec``.

        Its mid and negotiated payload type are known after the next offer/answer. Inactive
        transceivers are not reused: a receiver that saw its track end may not announce a new
        one on the same transceiver. Raises ``MediaClosed`` if the peer connection has closed.
        """
        self._check_open()
        slot = Slot(_sending_transceiver(self.pc, codec), codec)
        self._slots.append(slot)
        return slot

    def remove_outgoing(self, slot: Slot) -> None:
        """Stop offering ``slot``: it turns inactive at the next offer."""
        slot.transceiver.direction = "inactive"
        slot.payload_type = None

    def _check_negotiable(self) -> None:
        """A description for a closed transport is refused as aiortc refuses it, also once
        the closed connection has been taken apart."""
        if self._closing is not None:
            raise BadRequest("cannot negotiate: the media connection has closed")

    def _check_open(self) -> None:
        if self._closing is not None or self.pc.signalingState == "closed":
            raise MediaClosed(f"{self.name}: the media connection has closed")

    async def offer(self) -> str:
        """A new offer; raises ``MediaClosed`` if the peer connection has closed (it may close
        before this transport has heard of it, or while the offer is being made)."""
        self._check_open()
        try:
            created = await self.pc.createOffer()
            await self.pc.setLocalDescription(RTCSessionDescription(
                sdp=audio_sdp.complete_offer(created.sdp, self.red), type="offer"))
        except InvalidStateError:
            self._check_open()
            raise
        self._hook()
        # aiortc knows nothing of transport-wide congestion control: offered to the far end
        # only (the SFU writes the extension and reads the feedback itself).
        return twcc.complete_offer(str(self.pc.localDescription.sdp))

    async def accept_answer(self, answer: str) -> None:
        """Apply the participant's answer; each slot learns the payload type to send with."""
        self._check_negotiable()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:
            raise BadRequest(f"cannot negotiate: {exc}") from None
        # aiortc has just parsed it: with 50 people an answer has 98 sections, and parsing it
        # again took 8 % of the server's CPU while people joined.
        description = getattr(self.pc, "_RTCPeerConnection__currentRemoteDescription", None)
        if description is None:
            description = parse_sdp(answer)
        self._hook()
        by_mid = {m.rtp.muxId: m for m in description.media}
        for slot in self._slots:
            media = by_mid.get(slot.mid)
            accepted = (media is not None and media.port != 0 and bool(media.rtp.codecs)
                        and media.direction in ("recvonly", "sendrecv")
                        and slot.transceiver.direction == "sendonly")
            if not accepted or media is None:
                slot.payload_type = slot.red_payload_type = slot.abs_send_time = None
                slot.twcc = None
                continue
            slot.payload_type = _primary(media).payloadType
            slot.red_payload_type = audio_sdp.red_payload_type(media, slot.payload_type)
            slot.abs_send_time = _extension_id(media, ABS_SEND_TIME_URI)
            slot.twcc = _extension_id(media, twcc.URI) if media.kind == "video" else None

    def answer_as_dtls_server(self) -> None:
        """Answer offers with ``a=setup:passive``, so that the far end starts the DTLS handshake.

        As DTLS client aiortc offers only ECDSA cipher suites, and a peer whose certificate is
        RSA (GStreamer's webrtcbin) fails with "no shared cipher"; as DTLS server aiortc uses
        its own ECDSA certificate, which every WebRTC client accepts.
        """
        create = self.pc.createAnswer

        async def create_answer() -> RTCSessionDescription:
            answer = await create()
            return RTCSessionDescription(
                sdp=answer.sdp.replace("a=setup:active", "a=setup:passive"), type="answer")

        setattr(self.pc, "createAnswer", create_answer)  # noqa: B010

    async def answer_sending(
        self, offer: str, codecs: Mapping[str, Codec]
    ) -> tuple[str, dict[str, Slot]]:
        """Answer an offer to receive (a WHEP viewer's): the far end offers, the server sends.
        Transport-wide congestion control is accepted where the offer has it (``twcc.py``).

        The first audio and the first video section become send-only slots for ``codecs[kind]``,
        negotiated at once (each slot's payload type is set); other sections are refused. Returns
        the answer and the slots by kind.
        """
        self._check_negotiable()
        description = parse_sdp(offer)
        kinds = [m.kind for m in description.media
                 if m.kind in codecs and m.direction in ("recvonly", "sendrecv")]
        if not kinds:
            raise BadRequest("the offer asks for no audio or video the server can send")
        slots: dict[str, Slot] = {}
        for kind in dict.fromkeys(kinds):
            codec = codecs[kind]
            slots[kind] = Slot(_sending_transceiver(self.pc, codec), codec)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            raise BadRequest(f"cannot negotiate: {exc}") from None
        self._hook()
        answer = twcc.complete_answer(str(self.pc.localDescription.sdp), offer)
        by_mid = {m.rtp.muxId: m for m in parse_sdp(answer).media}
        for kind, slot in list(slots.items()):
            media = by_mid.get(slot.mid)
            if media is None or media.port == 0 or not media.rtp.codecs \
                    or media.direction != "sendonly":
                del slots[kind]
                continue
            slot.payload_type = media.rtp.codecs[0].payloadType
            slot.abs_send_time = _extension_id(media, ABS_SEND_TIME_URI)
            slot.twcc = _extension_id(media, twcc.URI) if kind == "video" else None
            self._slots.append(slot)
        if not slots:
            raise BadRequest("the offer asks for no audio or video the server can send")
        return answer, slots

    def resume_outgoing(self, slot: Slot, payload_type: int) -> None:
        """Send on ``slot`` again, after ``remove_outgoing``, with the payload type negotiated
        before: for transports whose far end never renegotiates (WHEP)."""
        slot.transceiver.direction = "sendonly"
        slot.payload_type = payload_type

    # -- sending ---------------------------------------------------------------------------

    def send_rtp(self, data: bytes) -> bool:
        """Protect and send one RTP packet now; False if the transport cannot send yet.

        Once the transport is linked to its socket (``_link``) an instance attribute of the
        same name, one closure doing the whole work, stands in for this method.
        """
        return self._send(data, rtcp=False)

    def send_rtcp(self, data: bytes) -> bool:
        """Protect and send one (compound) RTCP packet now; False if it cannot send yet.

        Once the transport is linked, an instance attribute stands in for it, as for
        :meth:`send_rtp`."""
        return self._send(data, rtcp=True)

    def _send(self, data: bytes, rtcp: bool) -> bool:
        dtls = self._dtls
        if not self._ready or dtls is None:
            return False
        srtp = dtls._tx_srtp
        try:
            protected = srtp.protect_rtcp(data) if rtcp else srtp.protect(data)
        except pylibsrtp.Error as exc:
            logger.debug("%s: SRTP protect failed: %s", self.name, exc)
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        pair.protocol.transport.sendto(protected, pair.remote_addr)
        return True

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def datagrams_received(self) -> int | None:
        """Datagrams of any kind that have arrived on the linked pair so far (None until the
        packet path is linked, and on aioice's own sockets, which do not count them)."""
        path = self._path
        return None if path is None else path.received

    # -- receiving -------------------------------------------------------------------------

    def _hook(self) -> None:
        for transceiver in self.pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is None or id(dtls) in self._hooked:
                continue
            self._hooked.add(id(dtls))
            setattr(dtls, "_handle_rtp_data",  # noqa: B010
                    functools.partial(self._rtp_arrived, dtls))
            setattr(dtls, "_handle_rtcp_data",  # noqa: B010
                    functools.partial(self._rtcp_arrived, dtls))
        transceivers = self.pc.getTransceivers()
        if transceivers:
            self._dtls = transceivers[0].receiver.transport

    def _link(self) -> None:
        """Take the packet path over from aiortc once SRTP is ready, if the pair allows it.

        Received SRTP then goes socket → unprotect → handler in one call, and ``send_rtp``
        protects and writes to the socket in one call (no ``await`` either way). Transports on
        aioice's own sockets (no IceMux) keep aiortc's path.
        """
        dtls = self._dtls
        pair = dtls.transport._connection._nominated.get(1)
        path = None if pair is None else media_path(pair.protocol, pair.remote_addr)
        if path is None:
            return
        self._path = path
        # the packet path's one call per forwarded packet (the method stays for the others)
        if path.hold is not None:
            self.send_rtp = _held_sender(  # type: ignore[method-assign,assignment]
                dtls._tx_srtp, path.hold, path.sockaddr)
            self.route = NativeSend.route(dtls._tx_srtp, path.fd, path.sockaddr)
        else:
            self.send_rtp = _srtp_sender(  # type: ignore[method-assign,assignment]
                dtls._tx_srtp, path.sendto, path.address, path.delay, self.name)
        # reports, feedback and requests: every tick to a publisher that numbers its packets
        self.send_rtcp = _srtp_sender(  # type: ignore[method-assign,assignment]
            dtls._tx_srtp, path.sendto, path.address, None, self.name,
            _srtp_lib.srtp_protect_rtcp)
        rx = dtls._rx_srtp
        unprotect = _srtp_call(rx, _srtp_lib.srtp_unprotect, 0)
        unprotect_rtcp = _srtp_call(rx, _srtp_lib.srtp_unprotect_rtcp, 0)
        handler = self._handler
        srtp_error = pylibsrtp.Error
        name = self.name

        def srtp_received(data: bytes) -> None:
            try:
                if 191 < data[1] < 224:  # RTCP packet types 192-223 (RFC 5761)
                    handler.rtcp_received(self, unprotect_rtcp(data))
                else:
                    handler.rtp_received(self, unprotect(data))
            except srtp_error as exc:
                logger.debug("%s: SRTP unprotect failed: %s", name, exc)

        native_receive = getattr(handler, "native_receive", None)
        to_router = None if native_receive is None or path.hold is None else \
            native_receive(self)
        if to_router is None:
            path.receive(srtp_received)
        else:
            path.receive(srtp_received, (NativeSend.session(rx), *to_router,
                                         NativeSend.feedback_sender(dtls._tx_srtp)))

    def _unlink(self) -> None:
        self.route = None
        if self._path is not None:
            self._path.close()
            vars(self).pop("send_rtp", None)
            vars(self).pop("send_rtcp", None)
        self._path = None

    async def _rtp_arrived(self, dtls: Any, data: bytes, arrival_time_ms: int = 0) -> None:
        if dtls is self._dtls:
            self._handler.rtp_received(self, data)

    async def _rtcp_arrived(self, dtls: Any, data: bytes) -> None:
        if dtls is self._dtls:
            self._handler.rtcp_received(self, data)

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self._ready_task is None and self._closing is None:
            self._ready_task = asyncio.ensure_future(self._wait_ready())
        elif state in ("failed", "closed"):
            await self.close()

    async def _wait_ready(self) -> None:
        # SRTP keys are installed a little after the connection state turns "connected".
        for _ in range(500):
            if self._closing is not None:  # closed while it waited: nothing to link
                return
            dtls = self._dtls
            if dtls is not None and dtls._tx_srtp is not None and \
                    dtls.transport._connection._nominated.get(1) is not None:
                self._ready = True
                self._link()
                self._handler.transport_ready(self)
                return
            await asyncio.sleep(0.01)
        logger.warning("%s: connected but SRTP never became ready", self.name)

    async def close(self) -> None:
        """Close the connection and tell the handler; every caller returns once that is done.

        The closing runs in a task of its own, to the end, even if a caller is cancelled: a
        cancelled caller inside aiortc's close would cancel the future that aiortc's own closing
        (once DTLS has ended) waits on, and the handler would never hear."""
        if self._closing is None:
            self._ready = False
            self._unlink()
            if self._ready_task is not None:
                self._ready_task.cancel()
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await self.pc.close()
        finally:
            self._handler.transport_closed(self)
        asyncio.get_running_loop().call_later(TAKE_APART_AFTER, self._take_apart)

    def _take_apart(self) -> None:
        try:
            teardown.take_apart(self.pc)
        except Exception:  # what is left is freed by the garbage collector, as before
            logger.exception("%s: taking the closed connection apart failed", self.name)
