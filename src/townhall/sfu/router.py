"""A router: one room's fan-out of producers to consumers.

The router is the ``MediaHandler`` of every transport in the room: it finds the producer (and
simulcast layer) of each arriving packet and hands the packet on, answers consumer feedback (NACKs
from the packet cache, keyframe requests relayed to the producer, bandwidth estimates), and sends
the periodic reports aiortc no longer sends once the SFU takes media over. Every
``ALLOCATE_INTERVAL`` (and at once when a transport's estimate drops, or a layout hint or
consumer changes) it chooses, per transport, which video consumers forward and on which layer
(``bandwidth.py``). It knows participants only as opaque owner strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from aiortc import RTCPeerConnection

from townhall import beat
from townhall.sfu import bandwidth, rtcp, rtp, speaker, twcc
from townhall.sfu.allocation import VideoAllocation
from townhall.sfu.audio_activity import Activity, AudioActivity
from townhall.sfu.consumer import Consumer
from townhall.sfu.fields import CountersFields
from townhall.sfu.producer import Producer, receive
from townhall.sfu.round_trip import RoundTrip
from townhall.sfu.simulcast import Layer, layer_for_size, needed_layers
from townhall.sfu.transport import IncomingTrack, Slot, Transport

logger = logging.getLogger(__name__)

#: Bandwidth the SFU tells video producers they may use, in bit/s.
DEFAULT_BITRATE = 2_500_000
REPORT_INTERVAL = 1.0
#: Sender reports (28 bytes each) stacked in one compound RTCP packet: under 1,200 bytes.
REPORTS_PER_PACKET = 40
ALLOCATE_INTERVAL = 0.5
#: Period of the router's short periodic work: held-back keyframe requests, audio levels,
#: bandwidth probes.
TICK_INTERVAL = speaker.TICK
# the tick runs every beat (``beat.Wakeups.every_beat``): the two periods are one
assert TICK_INTERVAL == beat.INTERVAL, "the routers' tick is the beat's"
#: A linked transport from which nothing at all has arrived for this long (no media, RTCP, STUN
#: or DTLS) is taken as lost and closed: the room then connects its participant again
#: (``publish-restart``, or everything offered on a new receiving connection). A live peer
#: sends consent checks and answers the server's about every 5 s (RFC 7675) even with no media,
#: so this is three of them missed; ICE's own consent failure takes about 50 s (``ice.py``).
SILENCE_TIMEOUT = 15.0
SILENCE_CHECK_INTERVAL = 1.0
#: How many audio producers (the loudest) are forwarded when more are unmuted.
LOUDEST_AUDIO = 3
#: Audio streams a participant in audio-only mode receives at once (the loudest).
AUDIO_ONLY_LOUDEST = 1
#: The pause reason of the audio consumers an audio-only transport does not get now.
NARROW_AUDIO = "audio-only-loudest"


class RouterEvents(Protocol):
    def speaking_changed(self, router: Router, owners: frozenset[str]) -> None: ...

    def active_speaker_changed(self, router: Router, owner: str | None) -> None: ...

    def forwarding_changed(self, router: Router, owner: str) -> None:
        """Video to ``owner``'s transport was paused or resumed as a whole, or the allocation
        changed which video consumers forward there (bandwidth, layout)."""

    def transport_closed(self, router: Router, owner: str, transport: Transport) -> None: ...

    def sent_layers_changed(self, router: Router, producer: Producer) -> None:
        """``producer`` should send ``producer.sent_layers.count`` of its simulcast layers
        (``simulcast.SentLayers``)."""


class Counters(CountersFields):
    """What the router has done, for ``/metrics``. The socket's native reader adds to
    ``packets_received``, ``packets_forwarded`` and ``bytes_forwarded`` in place (their
    base, ``fields.CountersFields``)."""

    __slots__ = ("keyframe_requests", "packets_dropped", "retransmissions", "silent_connections")

    def __init__(self) -> None:
        self.packets_received = 0
        self.packets_forwarded = 0
        self.bytes_forwarded = 0
        self.packets_dropped = 0
        self.retransmissions = 0
        self.keyframe_requests = 0
        #: Transports closed because nothing arrived from the peer for ``SILENCE_TIMEOUT``.
        self.silent_connections = 0


@dataclass
class _TransportState:
    owner: str
    video: VideoAllocation
    layers_by_ssrc: dict[int, Layer] = field(default_factory=dict)
    producers_by_mid: dict[str, Producer] = field(default_factory=dict)
    consumers_by_ssrc: dict[int, Consumer] = field(default_factory=dict)
    #: The round trip to the far end, from its reports on the sender reports sent to it.
    round_trip: RoundTrip = field(default_factory=RoundTrip)
    #: Reasons every video consumer on this transport is paused for (``set_video_paused``).
    video_pauses: set[str] = field(default_factory=set)
    #: ``Transport.datagrams_received`` when it last changed, and when that was.
    heard: int = -1
    heard_at: float = 0.0
    #: When the publisher's packets arrived, for the transport feedback it gets (once its
    #: answer accepted transport-wide congestion control).
    arrivals: twcc.TwccReceiver = field(default_factory=twcc.TwccReceiver)


def _feedback_ssrcs(state: _TransportState) -> tuple[int, int]:
    """The SSRCs transport feedback to a publisher carries: the RTCP SSRC of its first
    producer, and that producer's first known media SSRC (0 until one is)."""
    producer = next(iter(state.producers_by_mid.values()))
    media = next((layer.ssrc for layer in producer.layers if layer.ssrc is not None), 0)
    return producer.track.rtcp_ssrc, media


class Router:
    def __init__(
        self,
        name: str,
        events: RouterEvents | None = None,
        attach: Callable[[RTCPeerConnection], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        counters: Counters | None = None,
        loudest_audio: int = LOUDEST_AUDIO,
        audio_only_loudest: int = AUDIO_ONLY_LOUDEST,
        red: bool = True,
    ) -> None:
        self.name = name
        self.counters = counters if counters is not None else Counters()
        self._events = events
        self._attach = attach
        self._clock = clock
        self._transports: dict[Transport, _TransportState] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self._speaking: frozenset[str] = frozenset()
        self._audio = AudioActivity(clock, loudest_audio, audio_only_loudest)
        #: The audio producers audio-only transports receive, as last applied; stale when a
        #: transport's audio-only state or its consumers changed since.
        self._narrow: tuple[frozenset[str], tuple[str, ...], frozenset[str]] | None = None
        self._narrow_stale = False
        self._red = red
        self._active_speaker: str | None = None
        self._closed = False
        self._periodic = periodic = beat.shared()
        self._stop_periodic = [
            periodic.every(REPORT_INTERVAL, self._send_reports, f"{name}: reports"),
            periodic.every(ALLOCATE_INTERVAL, self._allocation_steps, f"{name}: allocation"),
            periodic.every(SILENCE_CHECK_INTERVAL, self._watch_silence, f"{name}: silence"),
            # every beat, in the wake-up of the first datagram after it: no runner's wake-up
            beat.wakeups().every_beat(self._tick),
        ]
        #: Transports being closed because they fell silent.
        self._closing: set[asyncio.Task[None]] = set()

    # -- transports --------------------------------------------------------------------------

    def create_transport(self, owner: str, name: str = "") -> Transport:
        transport = Transport(self, attach=self._attach, name=name or f"{self.name}/{owner}")
        transport.red = self._red
        self._transports[transport] = _TransportState(
            owner, VideoAllocation(transport.name, self._clock))
        return transport

    def owner_of(self, transport: Transport) -> str | None:
        state = self._transports.get(transport)
        return None if state is None else state.owner

    async def close_transport(self, transport: Transport) -> None:
        await transport.close()
        self._forget(transport)

    # -- producers -----------------------------------------------------------------------------

    async def publish(
        self, transport: Transport, offer: str, sources: dict[str, str]
    ) -> tuple[str, list[Producer], list[Producer]]:
        """Negotiate a publish offer; returns the answer, new producers and closed producers."""
        state = self._transports[transport]
        answer, tracks = await transport.answer(offer)
        state.arrivals.extension_id = twcc.answered_id(answer)
        wanted: dict[str, IncomingTrack] = {t.mid: t for t in tracks if t.mid in sources}
        added, removed = [], []
        for mid, producer in list(state.producers_by_mid.items()):
            if mid not in wanted or wanted[mid].codec != producer.codec:
                removed.append(producer)
                self.close_producer(producer)
        for mid, track in wanted.items():
            if mid in state.producers_by_mid:
                continue
            producer = Producer(state.owner, sources[mid], track, transport, self._clock)
            state.producers_by_mid[mid] = producer
            for ssrc in track.ssrcs:
                state.layers_by_ssrc[ssrc] = producer.layers[0]
            self.producers[producer.id] = producer
            added.append(producer)
        return answer, added, removed

    def close_producer(self, producer: Producer) -> None:
        if producer.closed:
            return
        producer.closed = True
        for consumer in list(producer.consumers):
            self.close_consumer(consumer)
        self.producers.pop(producer.id, None)
        state = self._transports.get(producer.transport)
        if state is not None:
            state.producers_by_mid.pop(producer.mid, None)
            for ssrc, layer in list(state.layers_by_ssrc.items()):
                if layer.producer is producer:
                    del state.layers_by_ssrc[ssrc]

    # -- consumers -----------------------------------------------------------------------------

    def consume(self, transport: Transport, producer: Producer) -> Consumer:
        """A consumer of ``producer`` on ``transport``; it sends after the next negotiation."""
        slot = transport.add_outgoing(producer.codec)
        consumer = Consumer(producer, transport, slot, self._clock)
        producer.consumers.append(consumer)
        self.consumers[consumer.id] = consumer
        state = self._transports[transport]
        state.consumers_by_ssrc[slot.ssrc] = consumer
        if producer.kind == "video":
            for reason in state.video_pauses:
                consumer.set_paused(True, reason)
        else:
            consumer.redundancy = not (state.video_pauses or state.video.low_bandwidth)
            self._narrow_stale = True
        self._allocate_on(transport)
        return consumer

    def consume_on(
        self, transport: Transport, slot: Slot, producer: Producer,
        follows: Consumer | None = None,
    ) -> Consumer:
        """A consumer of ``producer`` on a slot that is already negotiated (WHEP).

        With ``follows`` (an earlier consumer on the same slot), the output continues that
        consumer's sequence numbers and timestamps, so the far end sees one stream.
        """
        consumer = Consumer(producer, transport, slot, self._clock)
        if follows is not None:
            consumer.rewriter = follows.rewriter
            consumer.rewriter.restart()
            if follows.pictures is not None and consumer.pictures is not None:
                consumer.pictures = follows.pictures
                consumer.pictures.restart()
        producer.consumers.append(consumer)
        self.consumers[consumer.id] = consumer
        state = self._transports[transport]
        state.consumers_by_ssrc[slot.ssrc] = consumer
        state.video.use_twcc([consumer])  # the slot's negotiation is over
        producer.request_keyframe()
        self._allocate_on(transport)
        return consumer

    def close_consumer(self, consumer: Consumer) -> None:
        if consumer.closed:
            return
        consumer.closed = True
        with contextlib.suppress(ValueError):
            consumer.producer.consumers.remove(consumer)
        self.consumers.pop(consumer.id, None)
        state = self._transports.get(consumer.transport)
        if state is not None:
            state.consumers_by_ssrc.pop(consumer.slot.ssrc, None)
            consumer.transport.remove_outgoing(consumer.slot)

    # -- pausing all video to one transport ---------------------------------------------------

    def set_video_paused(self, transport: Transport, reason: str, paused: bool) -> None:
        """Pause (or resume) every video consumer on ``transport``, now and later, for ``reason``.

        Audio keeps flowing, as plain Opus even where RED was negotiated (audio-only mode is
        for saving bandwidth). Used for audio-only mode ("audio-only" when the participant asks
        for it; video cut because the transport's estimate is too low for any video is the
        allocation's doing, see ``low_bandwidth``). Video resumes once no reason is left,
        without renegotiation.
        """
        state = self._transports.get(transport)
        if state is None:
            return
        before = bool(state.video_pauses)
        if paused:
            state.video_pauses.add(reason)
        else:
            state.video_pauses.discard(reason)
        for consumer in state.consumers_by_ssrc.values():
            if consumer.producer.kind == "video":
                consumer.set_paused(paused, reason)
            else:
                consumer.redundancy = not (state.video_pauses or state.video.low_bandwidth)
        if not paused:
            self.check_sent_layers()
        if before != bool(state.video_pauses) and self._events is not None:
            self._events.forwarding_changed(self, state.owner)
        self._narrow_stale = True
        self._allocate(transport, state, self._clock())

    def video_paused(self, transport: Transport) -> bool:
        """Whether all video to ``transport`` is paused, for whatever reason."""
        state = self._transports.get(transport)
        return state is not None and bool(state.video_pauses)

    async def subscribe_offer(self, transport: Transport) -> str:
        return await transport.offer()

    async def subscribe_answer(self, transport: Transport, answer: str) -> None:
        await transport.accept_answer(answer)
        state = self._transports.get(transport)
        if state is not None:
            state.video.use_twcc(state.consumers_by_ssrc.values())
        self._allocate_on(transport)  # consumers just negotiated get their first layer
        if transport.ready:
            self.transport_ready(transport)

    # -- MediaHandler --------------------------------------------------------------------------

    def native_receive(self, transport: Transport) -> tuple[
            dict[int, Layer], Counters, Callable[[], float], Callable[[bytes], None],
            Callable[[bytes], None], VideoAllocation, Callable[[float], bool],
            bytearray] | None:
        """What the socket's native reader needs to do :meth:`rtp_received` and, for
        transport feedback, :meth:`rtcp_received` for ``transport`` itself (``native.Plain``
        but the session): the transport's layers by SSRC, the counters, the clock,
        :meth:`rtp_received` for what it leaves to Python, :meth:`rtcp_received`, the
        transport's video allocation, what takes the estimate its feedback gave, and where
        it notes when the publisher's packets arrived (``TwccReceiver.arrivals``). None
        without the native piece or for a transport the router does not know."""
        state = self._transports.get(transport)
        if receive is None or state is None:
            return None
        return (state.layers_by_ssrc, self.counters, self._clock,
                functools.partial(self.rtp_received, transport, noted=True),
                functools.partial(self.rtcp_received, transport), state.video,
                functools.partial(self._estimated, transport, state.video),
                state.arrivals.arrivals)

    def rtp_received(self, transport: Transport, data: bytes, noted: bool = False) -> None:
        """An RTP packet from a publisher; ``noted``: its arrival is in ``arrivals`` already
        (the socket's native reader notes it before it leaves a packet to Python)."""
        counters = self.counters
        counters.packets_received += 1
        if receive is not None:  # the whole of it in C, unless it leaves the packet to Python
            state = self._transports.get(transport)
            if state is None:
                return
            now = self._clock()
            if state.arrivals.extension_id and not noted:
                state.arrivals.record(data, now)
            sent = receive(data, state.layers_by_ssrc, now)
            if sent >= 0:
                counters.packets_forwarded += sent
                counters.bytes_forwarded += sent * len(data)
                return
        try:
            header = rtp.parse_header(data)
        except ValueError as exc:
            counters.packets_dropped += 1
            logger.debug("%s: dropped RTP: %s", transport.name, exc)
            return
        state = self._transports.get(transport)
        if state is None:
            return
        if receive is None and state.arrivals.extension_id and not noted:
            state.arrivals.record(data, self._clock())
        layer = state.layers_by_ssrc.get(header.ssrc)
        if layer is None:
            layer = self._learn_ssrc(state, data, header)
            if layer is None:
                counters.packets_dropped += 1
                return
        sent = layer.producer.forward(data, header, layer)
        counters.packets_forwarded += sent
        counters.bytes_forwarded += sent * len(data)

    def _learn_ssrc(
        self, state: _TransportState, data: bytes, header: rtp.RtpHeader
    ) -> Layer | None:
        """Map an SSRC the SDP did not list to its producer's layer, by the MID header
        extension and, with simulcast, the RID one.

        Only producers whose SDP listed no SSRC learn one: a producer with listed SSRCs takes
        packets of those alone, so a second stream never mixes into its consumers. A layer's
        SSRC is learnt once.
        """
        mid_id = next((p.track.mid_extension for p in state.producers_by_mid.values()
                       if p.track.mid_extension is not None), None)
        if mid_id is None:
            return None
        try:
            found = rtp.extensions(data, header)
        except ValueError:
            return None
        mid = found.get(mid_id)
        producer = None if mid is None else \
            state.producers_by_mid.get(mid.decode("ascii", "replace"))
        if producer is None or producer.track.ssrcs:
            return None
        if producer.simulcast:
            rid_id = producer.track.rid_extension
            rid = None if rid_id is None else found.get(rid_id)
            layer = None if rid is None else next(
                (x for x in producer.layers if x.rid == rid.decode("ascii", "replace")), None)
        else:
            layer = producer.layers[0]
        if layer is None or layer.ssrc is not None:
            return None
        layer.ssrc = header.ssrc
        state.layers_by_ssrc[header.ssrc] = layer
        logger.debug("%s: learnt SSRC %d for %s layer %d", self.name, header.ssrc, producer.id,
                     layer.index)
        producer.request_keyframe(layer.index)
        producer.send_reports(DEFAULT_BITRATE)
        return layer

    def rtcp_received(self, transport: Transport, data: bytes) -> None:
        if twcc.alone(data):
            # Ten times a second per receiver: straight to the estimate, without the parse.
            found = self._transports.get(transport)
            if found is not None:
                self._transport_feedback(transport, found, data)
            return
        try:
            feedback = rtcp.parse(data)
        except ValueError as exc:
            self.counters.packets_dropped += 1
            logger.debug("%s: dropped RTCP: %s", transport.name, exc)
            return
        state = self._transports.get(transport)
        if state is None:
            return
        reports: list[tuple[Consumer, int]] = []
        for item in feedback:
            if item.kind == "sender-report":
                layer = state.layers_by_ssrc.get(item.media_ssrc)
                if layer is not None:
                    layer.sender_reported(item.ntp_timestamp, item.rtp_timestamp,
                                          self._clock())
                continue
            if item.kind == "twcc":
                self._transport_feedback(transport, state, item.raw)
                continue
            if item.kind == "remb":
                if state.consumers_by_ssrc and state.video.remb(item.bitrate):
                    self._allocate_on(transport)
                continue
            consumer = state.consumers_by_ssrc.get(item.media_ssrc)
            if consumer is None:
                continue
            if item.kind == "nack":
                resent = consumer.resent
                missing = consumer.retransmit(item.lost, state.video.resend,
                                              state.round_trip.resend_interval())
                self.counters.retransmissions += consumer.resent - resent
                if consumer.layer >= 0:
                    consumer.producer.request_retransmission(consumer.layer, missing)
            elif item.kind == "keyframe":
                self.counters.keyframe_requests += 1
                consumer.producer.request_keyframe(
                    consumer.layer if consumer.layer >= 0 else max(0, consumer.target))
            elif item.kind == "report":
                state.round_trip.reported(item.last_sr, item.delay_since_sr, self._clock())
                if consumer.producer.kind == "video":
                    reports.append((consumer, item.fraction_lost))
        if reports and state.video.receiver_reports(reports):
            self._allocate_on(transport)

    def _estimated(self, transport: Transport, video: VideoAllocation, bitrate: float) -> bool:
        """The estimate the socket's native reader got from ``transport``'s feedback; returns
        whether it was taken (not while reports are ignored after a retry: the reader then
        hands the next one over whether or not it changed)."""
        taken = video.estimate.taking()
        if video.estimated(bitrate) and transport in self._transports:
            self._allocate_on(transport)
        return taken

    def _transport_feedback(self, transport: Transport, state: _TransportState,
                            raw: bytes) -> None:
        try:
            dropped = state.video.transport_feedback(raw)
        except ValueError as exc:
            self.counters.packets_dropped += 1
            logger.debug("%s: dropped transport feedback: %s", transport.name, exc)
            return
        if dropped:
            self._allocate_on(transport)

    def transport_ready(self, transport: Transport) -> None:
        state = self._transports.get(transport)
        if state is None:
            return
        for consumer in state.consumers_by_ssrc.values():
            consumer.producer.request_keyframe(max(0, consumer.target))
        for producer in state.producers_by_mid.values():
            producer.request_keyframe()

    def transport_closed(self, transport: Transport) -> None:
        state = self._forget(transport)
        if state is not None and self._events is not None:
            self._events.transport_closed(self, state.owner, transport)

    def _forget(self, transport: Transport) -> _TransportState | None:
        state = self._transports.pop(transport, None)
        if state is None:
            return None
        for producer in list(state.producers_by_mid.values()):
            self.close_producer(producer)
        for consumer in list(state.consumers_by_ssrc.values()):
            self.close_consumer(consumer)
        return state

    # -- periodic work -------------------------------------------------------------------------

    def _send_reports(self) -> Iterator[None]:
        """Receiver reports to producers; each transport's consumers' sender reports stacked in
        compound RTCP packets (one per transport and second, not one per consumer)."""
        for producer in list(self.producers.values()):
            if not producer.closed:
                producer.send_reports(DEFAULT_BITRATE)  # one compound packet
                yield
        for transport, state in list(self._transports.items()):
            if state.arrivals.extension_id and state.producers_by_mid:
                state.arrivals.note_ssrcs(*_feedback_ssrcs(state))  # for the socket's reader
            reports = [report for consumer in list(state.consumers_by_ssrc.values())
                       if (report := consumer.sender_report()) is not None]
            now = self._clock()
            for report in reports:
                state.round_trip.sent(rtcp.sender_report_ntp(report), now)
            for start in range(0, len(reports), REPORTS_PER_PACKET):
                transport.send_rtcp(b"".join(reports[start:start + REPORTS_PER_PACKET]))
            yield

    def _watch_silence(self) -> None:
        """Close every linked transport that has received nothing for ``SILENCE_TIMEOUT``."""
        now = self._clock()
        for transport, state in list(self._transports.items()):
            received = transport.datagrams_received
            if received is None:
                continue
            if received != state.heard:
                state.heard, state.heard_at = received, now
            elif now - state.heard_at >= SILENCE_TIMEOUT:
                logger.info("%s: nothing arrived from %s for %.0f s: its connection is lost",
                            self.name, transport.name, now - state.heard_at)
                state.heard_at = now
                self.counters.silent_connections += 1
                task = asyncio.ensure_future(transport.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _tick(self) -> None:
        """Every ``TICK_INTERVAL``: held-back keyframe requests, the transport feedback the
        socket's reader does not send, and the audio tick. What that finds to do for each
        transport (narrowing audio-only transports' audio when the loudest changed, probe
        padding) goes to the beat's runner, which runs it in steps."""
        for producer in self.producers.values():
            if producer.keyframe_pending:
                producer.flush_keyframe_request()
        self._send_transport_feedback()
        activity = self._audio.tick(self.producers.values())
        if activity.speaking != self._speaking:
            self._speaking = activity.speaking
            if self._events is not None:
                self._events.speaking_changed(self, activity.speaking)
        if activity.dominant != self._active_speaker:
            self._active_speaker = activity.dominant
            if self._events is not None:
                self._events.active_speaker_changed(self, activity.dominant)
        narrow = (activity.forwarded, activity.ranked, activity.unlevelled)
        if narrow != self._narrow or self._narrow_stale:
            self._narrow, self._narrow_stale = narrow, False
            self._periodic.run_soon(functools.partial(self._narrow_audio, activity),
                                    f"{self.name}: audio-only narrowing")
        if any(state.video.probe_rate or state.video.padded
               for state in self._transports.values()):
            self._periodic.run_soon(self._probe, f"{self.name}: probing")

    def _send_transport_feedback(self) -> None:
        """Tell each publisher that numbers its packets when they arrived (every tick: a
        browser's estimate of its uplink waits for this feedback). Where the socket's native
        reader reads the publisher, it sends the feedback itself as packets arrive, with the
        SSRCs noted here the first time and by the reports each second after."""
        now = self._clock()
        for transport, state in self._transports.items():
            arrivals = state.arrivals
            if not arrivals.extension_id or not state.producers_by_mid:
                continue
            if arrivals.by_reader and arrivals.ssrcs_known:
                continue  # the socket's reader sends it
            for packet in arrivals.feedback(now, *_feedback_ssrcs(state)):
                transport.send_rtcp(packet)

    def _narrow_audio(self, activity: Activity) -> Iterator[None]:
        """Audio-only transports (asked for, or cut to audio by the allocation) get only the
        loudest audio (``AUDIO_ONLY_LOUDEST``): one Opus stream fits 64 kbit/s, three do not.
        One step per transport."""
        for transport, state in list(self._transports.items()):
            yield
            if self._transports.get(transport) is not state:
                continue
            audio = [c for c in state.consumers_by_ssrc.values() if c.producer.kind == "audio"]
            if bool(state.video_pauses) or state.video.low_bandwidth:
                heard = self._audio.for_audio_only(
                    activity, [c.producer.id for c in audio
                               if c.producer.selected and not c.producer.paused])
            else:
                heard = None
            for consumer in audio:
                consumer.set_paused(heard is not None and consumer.producer.id not in heard,
                                    NARROW_AUDIO)

    # -- allocation ----------------------------------------------------------------------------

    def set_layout(self, consumer: Consumer, width: int, height: int) -> None:
        """The far end shows ``consumer``'s video at ``width`` × ``height`` pixels (0×0:
        hidden); no larger layer than that size needs is forwarded."""
        if consumer.closed or consumer.producer.kind != "video":
            return
        layer = layer_for_size(consumer.producer.layers, width, height)
        logger.debug("%s: %s shown at %dx%d: layers up to %d", consumer.transport.name,
                     consumer.id, width, height, layer)
        if layer != consumer.max_layer:
            consumer.max_layer = layer
            self._update_sent_layers(consumer.producer, self._clock())
            self._allocate_on(consumer.transport)

    def round_trip(self, transport: Transport) -> float | None:
        """The smoothed round trip to ``transport``'s far end in seconds, None until its
        reports on the sender reports sent to it gave one."""
        state = self._transports.get(transport)
        return None if state is None else state.round_trip.rtt

    def low_bandwidth(self, transport: Transport) -> bool:
        """Whether video to ``transport`` is cut because even the lowest layer of one video
        does not fit its bandwidth estimate (automatic audio-only)."""
        state = self._transports.get(transport)
        return state is not None and state.video.low_bandwidth

    def estimate(self, transport: Transport) -> bandwidth.Estimate | None:
        """The bandwidth estimate of a transport the router sends on."""
        state = self._transports.get(transport)
        return None if state is None else state.video.estimate

    def allocate(self) -> None:
        """Measure every layer, then choose every transport's video layers."""
        for _ in self._allocation_steps():
            pass

    def _allocation_steps(self) -> Iterator[None]:
        """``allocate`` as periodic work: one step per transport."""
        now = self._clock()
        for producer in list(self.producers.values()):
            producer.measure(now)
            self._update_sent_layers(producer, now)
        for transport, state in list(self._transports.items()):
            yield
            if state.consumers_by_ssrc and self._transports.get(transport) is state:
                self._allocate(transport, state, self._clock())

    def check_sent_layers(self) -> None:
        """Consumers were resumed or shown larger: ask their producers for the layers they can
        use now, without waiting for the next allocation (``simulcast.SentLayers``)."""
        now = self._clock()
        for producer in list(self.producers.values()):
            self._update_sent_layers(producer, now)

    def _update_sent_layers(self, producer: Producer, now: float) -> None:
        if producer.simulcast and producer.sent_layers.update(needed_layers(producer), now):
            logger.debug("%s: %s asked to send %d layers", self.name, producer.id,
                         producer.sent_layers.count)
            if self._events is not None:
                self._events.sent_layers_changed(self, producer)

    def _allocate_on(self, transport: Transport) -> None:
        state = self._transports.get(transport)
        if state is not None:
            self._allocate(transport, state, self._clock())

    def _allocate(self, transport: Transport, state: _TransportState, now: float) -> None:
        video = state.video
        was_low = video.low_bandwidth
        if not video.run(state.consumers_by_ssrc.values(), now):
            return
        if video.low_bandwidth != was_low:
            self._narrow_stale = True
            # Like audio-only mode, a transport too slow for video gets plain Opus.
            for consumer in state.consumers_by_ssrc.values():
                if consumer.producer.kind != "video":
                    consumer.redundancy = not (state.video_pauses or video.low_bandwidth)
        if self._events is not None:
            self._events.forwarding_changed(self, state.owner)

    def _probe(self) -> Iterator[None]:
        """Periodic work: probe padding for the transports whose estimate should grow."""
        for state in list(self._transports.values()):
            if state.video.probe_rate or state.video.padded:
                yield
                state.video.probe(state.consumers_by_ssrc.values(), TICK_INTERVAL)

    @property
    def speaking(self) -> frozenset[str]:
        return self._speaking

    @property
    def active_speaker(self) -> str | None:
        """The dominant speaker (an owner), smoothed: see ``sfu/speaker.py``."""
        return self._active_speaker

    async def close(self) -> None:
        """Close every transport; idempotent."""
        if self._closed:
            return
        self._closed = True
        for stop in self._stop_periodic:
            stop()
        for transport in list(self._transports):
            await self.close_transport(transport)
