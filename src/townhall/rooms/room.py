"""A live room: its current meeting, the participants in it, and their media through the router.

Everything participants do to each other goes through here: joining and leaving, publishing and
receiving tracks, chat, raised hands and the host's controls. Permission checks happen here, on the
server, whatever the page shows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from townhall.errors import BadRequest, Forbidden, MediaClosed, NotFound, Removed, RoomLocked
from townhall.rooms.captions import RoomCaptions, is_worker
from townhall.rooms.forwarding import SpeakerOrder, cameras_for
from townhall.rooms.media import MediaRouter
from townhall.rooms.participant import SOURCES, Outbox, Participant

if TYPE_CHECKING:
    from townhall.auth.tokens import Grant
    from townhall.store import MeetingRecord, RoomRecord, Store

logger = logging.getLogger(__name__)

#: Why the room pauses a consumer or a transport's video (see ``Consumer.set_paused``).
LAST_N = "last-n"
AUDIO_ONLY = "audio-only"
#: Most participants one can pin.
MAX_PINS = 40


class LiveRoom:
    def __init__(
        self,
        record: RoomRecord,
        meeting: MeetingRecord,
        store: Store,
        router: MediaRouter,
        reconnect_grace: float,
        on_empty: Callable[[LiveRoom], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = record.id
        self.name = record.name
        self.locked = record.locked
        self.last_n = record.last_n
        self.meeting = meeting
        self.store = store
        self.router = router
        self.participants: dict[str, Participant] = {}
        self.queue: list[str] = []
        self.speaking: frozenset[str] = frozenset()
        self.active_speaker: str | None = None
        self._order = SpeakerOrder()
        self._banned: set[str] = set()
        self._grace = reconnect_grace
        self._on_empty = on_empty
        self._clock = clock
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self.captions = RoomCaptions(self, record.captions)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "locked": self.locked,
                "last_n": self.last_n, "captions": self.captions.enabled}

    # -- arriving and leaving ------------------------------------------------------------------

    async def join(
        self, grant: Grant, name: str, resume: str | None, outbox: Outbox
    ) -> tuple[Participant, bool]:
        """Admit someone; returns the participant and whether they took back an earlier place."""
        if grant.room_id != self.id:
            raise Forbidden("token is for another room")
        permissions = grant.permissions
        if "join" not in permissions:
            raise Forbidden(f"role {grant.role!r} cannot join a meeting")
        if grant.token_id in self._banned:
            raise Removed("removed by host")
        if resume:
            for participant in self.participants.values():
                if secrets.compare_digest(participant.resume, resume) and \
                        participant.token_id == grant.token_id:
                    await self._reattach(participant, outbox)
                    return participant, True
        if self.locked and "moderate" not in permissions:
            raise RoomLocked("room locked")
        participant = Participant(
            id=secrets.token_hex(6),
            name=name,
            role=grant.role,
            permissions=permissions,
            token_id=grant.token_id,
            outbox=outbox,
            receive_video="caption" not in permissions,
        )
        self.participants[participant.id] = participant
        self._order.joined(participant.id)
        await self.store.record_join(self.meeting.id, participant.id, name, grant.role,
                                     self._clock())
        await self._broadcast({"type": "participant-joined",
                               "participant": participant.describe(self.speaking)},
                              skip=participant)
        logger.info("room %s: participant %s joined as %s", self.id, participant.id, grant.role)
        return participant, False

    async def _reattach(self, participant: Participant, outbox: Outbox) -> None:
        if participant.grace is not None:
            participant.grace.cancel()
            participant.grace = None
        old = participant.outbox
        participant.outbox = outbox
        if participant.connected and old is not None and old is not outbox:
            await old.close(4409, "replaced by a new connection")
        await self._drop_media(participant)
        participant.connected = True
        participant.forwarded = None
        await self._updated(participant)
        logger.info("room %s: participant %s resumed", self.id, participant.id)

    async def welcome(self, participant: Participant, resumed: bool) -> None:
        """Send ``joined``, then start sending everyone's media to the newcomer."""
        chat = await self.store.chat(self.meeting.id)
        await participant.send({
            "type": "joined",
            "participant": participant.describe(self.speaking),
            "resume": participant.resume,
            "resumed": resumed,
            "room": self.describe(),
            "meeting": {"id": self.meeting.id, "started_at": self.meeting.started_at},
            "participants": [p.describe(self.speaking) for p in self.participants.values()
                             if p is not participant],
            "chat": [_chat_message(c) for c in chat],
            "queue": list(self.queue),
            "active_speaker": self.active_speaker,
            "ice_servers": [],
        })
        await self.captions.welcomed(participant)
        await self._consume_all(participant)
        self._apply_forwarding([participant])

    async def disconnected(self, participant: Participant) -> None:
        """The page's connection dropped: keep the place for a while, stop its media now."""
        if participant.id not in self.participants or not participant.connected:
            return
        participant.connected = False
        participant.outbox = None
        await self._drop_media(participant)
        await self._updated(participant)
        loop = asyncio.get_running_loop()
        participant.grace = loop.call_later(
            self._grace, lambda: self._spawn(self.leave(participant)))

    async def leave(self, participant: Participant) -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        if participant.grace is not None:
            participant.grace.cancel()
        self._order.left(participant.id)
        await self._drop_media(participant)
        if participant.id in self.queue:
            self.queue.remove(participant.id)
            await self._send_queue()
        await self.store.record_leave(self.meeting.id, participant.id, self._clock())
        await self._broadcast({"type": "participant-left", "participant": participant.id})
        logger.info("room %s: participant %s left", self.id, participant.id)
        await self.captions.left(participant)
        # The captions worker alone does not keep a meeting going.
        if all(is_worker(p) for p in self.participants.values()):
            await self.close()

    async def shutdown(self) -> None:
        """The server is stopping: pages are told to reconnect, the meeting stays open.

        After a restart the same meeting continues; attendance records this session's end.
        """
        await self._stop(1012, "server restarting", end_meeting=False)

    async def close(self) -> None:
        """End the meeting: everyone is sent away and the meeting is recorded as ended."""
        await self._stop(1001, "meeting closed", end_meeting=True)

    async def _stop(self, code: int, reason: str, end_meeting: bool) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        for participant in list(self.participants.values()):
            if participant.grace is not None:
                participant.grace.cancel()
            if not end_meeting:  # ending the meeting closes open attendance itself
                await self.store.record_leave(self.meeting.id, participant.id, now)
            if participant.outbox is not None:
                await participant.outbox.close(code, reason)
        self.participants.clear()
        await self.router.close()
        if end_meeting:
            await self.store.end_meeting(self.meeting.id, now)
        self._on_empty(self)

    # -- media ---------------------------------------------------------------------------------

    async def publish(self, participant: Participant, offer: str, tracks: dict[str, str],
                      restart: bool = False) -> str:
        """Negotiate the page's publishing connection; ``restart``: the offer is a new
        connection's (after ``publish-restart``), so any earlier one is closed first."""
        if not participant.can("publish"):
            raise Forbidden("this role cannot publish")
        for source in tracks.values():
            if source not in SOURCES:
                raise BadRequest(f"unknown source: {source!r}")
        if len(set(tracks.values())) != len(tracks):
            raise BadRequest("each source may be published once")
        if restart and participant.publish_transport is not None:
            await self._unpublish(participant)
        if participant.publish_transport is None:
            participant.publish_transport = self.router.create_transport(
                participant.id, f"{self.id}/{participant.id}/publish")
        answer, added, removed = await self.router.publish(
            participant.publish_transport, offer, tracks)
        for producer in removed:
            participant.producers.pop(producer.source, None)
            await self._producer_closed(producer)
        for producer in added:
            participant.producers[producer.source] = producer
            muted = producer.source == "microphone" and participant.muted_by_host
            if muted or participant.enabled.get(producer.source) is False:
                producer.set_paused(True)
        if added:
            targets = [other for other in self.participants.values()
                       if other is not participant and other.connected]
            for other in targets:
                for producer in added:
                    self._consume(other, producer)
            self._apply_forwarding()
            for other in targets:
                await self._renegotiate(other)
        if added or removed:
            await self._updated(participant)
        return answer

    def _consume(self, participant: Participant, producer: Any) -> None:
        if participant.subscribe_transport is None:
            participant.subscribe_connection += 1
            participant.subscribe_transport = self.router.create_transport(
                participant.id,
                f"{self.id}/{participant.id}/subscribe-{participant.subscribe_connection}")
            if not participant.receive_video:
                self.router.set_video_paused(participant.subscribe_transport, AUDIO_ONLY, True)
        transport = participant.subscribe_transport
        try:
            participant.consumers[producer.id] = self.router.consume(transport, producer)
        except MediaClosed:
            # Their connection died and the room has not heard yet; it hears now.
            logger.info("%s: %s's media connection has closed", self.id, participant.id)
            self._spawn(self.router.close_transport(transport))

    async def _consume_all(self, participant: Participant) -> None:
        added = False
        for other in self.participants.values():
            if other is participant:
                continue
            for producer in other.producers.values():
                if producer.id not in participant.consumers:
                    self._consume(participant, producer)
                    added = True
        if added:
            await self._renegotiate(participant)

    async def _producer_closed(self, producer: Any) -> None:
        changed = []
        for other in self.participants.values():
            consumer = other.consumers.pop(producer.id, None)
            if consumer is not None:
                self.router.close_consumer(consumer)
                changed.append(other)
        if producer.kind == "video":
            self._apply_forwarding()
        for other in changed:
            if other.connected:
                await self._renegotiate(other)

    async def _renegotiate(self, participant: Participant) -> None:
        if participant.offer_pending:
            participant.offer_wanted = True
            return
        transport = participant.subscribe_transport
        if transport is None or not participant.connected:
            return
        participant.offer_pending = True
        participant.offer_wanted = False
        try:
            sdp = await self.router.subscribe_offer(transport)
        except MediaClosed:
            # As in _consume: whoever caused this renegotiation (another participant's
            # publish, say) carries on.
            participant.offer_pending = False
            logger.info("%s: %s's media connection has closed; no new offer", self.id,
                        participant.id)
            await self.router.close_transport(transport)
            return
        consumers = [
            {"mid": c.mid, "participant": c.producer.owner, "source": c.producer.source,
             "kind": c.producer.kind, "producer": c.producer.id}
            for c in participant.consumers.values() if c.mid is not None
        ]
        await participant.send({"type": "subscribe-offer", "sdp": sdp, "consumers": consumers,
                                "connection": participant.subscribe_connection})

    async def subscribe_answer(self, participant: Participant, answer: str,
                               connection: int | None = None) -> None:
        """The page's answer to the last ``subscribe-offer``; ``connection`` (when given) is the
        offer's, and an answer meant for a receiving connection since lost is ignored."""
        if connection is not None and connection != participant.subscribe_connection:
            logger.info("%s: %s answered for receiving connection %d, now %d; ignored",
                        self.id, participant.id, connection, participant.subscribe_connection)
            return
        if not participant.offer_pending or participant.subscribe_transport is None:
            raise BadRequest("no subscribe offer is waiting for an answer")
        try:
            await self.router.subscribe_answer(participant.subscribe_transport, answer)
        finally:
            participant.offer_pending = False
        if participant.offer_wanted:
            await self._renegotiate(participant)

    async def set_media(self, participant: Participant, source: str, enabled: bool) -> None:
        if source not in SOURCES:
            raise BadRequest(f"unknown source: {source!r}")
        participant.enabled[source] = enabled
        if source == "microphone" and enabled:
            participant.muted_by_host = False
        producer = participant.producers.get(source)
        if producer is not None:
            producer.set_paused(not enabled)
            if source == "camera":
                self._apply_forwarding()
        await self._updated(participant)

    async def _drop_media(self, participant: Participant) -> None:
        self._forget_consumers(participant)
        transport, participant.subscribe_transport = participant.subscribe_transport, None
        if transport is not None:
            await self.router.close_transport(transport)
        await self._unpublish(participant)

    def _forget_consumers(self, participant: Participant) -> None:
        for consumer in participant.consumers.values():
            self.router.close_consumer(consumer)
        participant.consumers.clear()
        participant.offer_pending = participant.offer_wanted = False

    def transport_lost(self, owner: str, transport: Any) -> None:
        """The router saw a transport close that the room did not close (ICE gave up, say):
        the participant gets a new one, and their page is told to connect again."""
        participant = self.participants.get(owner)
        if participant is None:
            return
        if transport is participant.publish_transport:
            participant.publish_transport = None
            self._spawn(self._publishing_lost(participant))
        elif transport is participant.subscribe_transport:
            participant.subscribe_transport = None
            self._spawn(self._receiving_lost(participant))

    async def _publishing_lost(self, participant: Participant) -> None:
        """Others stop receiving what the lost connection carried; the page publishes again
        (``publish-restart``) and its next ``publish`` makes a new connection."""
        logger.info("%s: %s's publishing connection was lost", self.id, participant.id)
        await self._unpublish(participant)
        if participant.connected:
            await participant.send({"type": "publish-restart"})
            await self._updated(participant)

    async def _unpublish(self, participant: Participant) -> None:
        producers = list(participant.producers.values())
        participant.producers.clear()
        transport, participant.publish_transport = participant.publish_transport, None
        if transport is not None:  # closing it closes its producers at the router
            await self.router.close_transport(transport)
        for producer in producers:
            await self._producer_closed(producer)

    async def publishing_lost(self, participant: Participant) -> None:
        """The page's publishing connection failed or stayed disconnected (``publish-lost``):
        as when the server finds it lost, it is closed and the page told to publish again.
        Without a publishing connection (it was replaced, or is being) nothing changes."""
        if participant.publish_transport is None:
            logger.info("%s: %s reported a publishing connection lost that is gone already",
                        self.id, participant.id)
            return
        await self._publishing_lost(participant)

    async def receiving_lost(self, participant: Participant, connection: int) -> None:
        """The page's receiving connection ``connection`` failed or stayed disconnected
        (``receive-lost``): it is closed, and everything is offered again on a new one. A
        number that is not the current connection's changes nothing: that one was replaced
        already."""
        transport = participant.subscribe_transport
        if transport is None or connection != participant.subscribe_connection:
            logger.info("%s: %s asked to replace receiving connection %d, now %d; ignored",
                        self.id, participant.id, connection, participant.subscribe_connection)
            return
        participant.subscribe_transport = None
        await self.router.close_transport(transport)
        await self._receiving_lost(participant)

    async def _receiving_lost(self, participant: Participant) -> None:
        """Everything the participant received is offered again on a new connection (the
        offer's ``connection`` number tells the page it is a new one)."""
        logger.info("%s: %s's receiving connection was lost", self.id, participant.id)
        self._forget_consumers(participant)
        if participant.connected:
            await self._consume_all(participant)
            self._apply_forwarding([participant])

    def layout(self, participant: Participant, sizes: dict[str, tuple[int, int]]) -> None:
        """The page shows the video of each consumer (by mid) at this size (0×0: hidden)."""
        by_mid = {c.mid: c for c in participant.consumers.values() if c.mid is not None}
        for mid, (width, height) in sizes.items():
            consumer = by_mid.get(mid)
            if consumer is not None:
                self.router.set_layout(consumer, width, height)

    def speaking_changed(self, owners: frozenset[str]) -> None:
        self.speaking = owners
        self._spawn(self._broadcast({"type": "speaking", "participants": sorted(owners)}))

    # -- who receives whose video ----------------------------------------------------------------

    def active_speaker_changed(self, owner: str | None) -> None:
        """The router's dominant speaker changed: tell everyone, move them up the last-N order."""
        self.active_speaker = owner
        self._spawn(self._broadcast({"type": "active-speaker", "participant": owner}))
        if owner is not None and self._order.spoke(owner):
            self._apply_forwarding()

    def forwarding_changed(self, owner: str) -> None:
        """The router paused or resumed video to a participant (audio-only, bandwidth, layout
        hints)."""
        participant = self.participants.get(owner)
        if participant is not None:
            self._send_forwarding(participant)

    def sent_layers_changed(self, owner: str, source: str, layers: int) -> None:
        """The router asks ``owner`` to send only the lowest ``layers`` simulcast layers of
        ``source``: nobody can use the others now (``sfu/simulcast.py``)."""
        participant = self.participants.get(owner)
        if participant is not None:
            self._spawn(participant.send({"type": "send-layers", "source": source,
                                          "layers": layers}))

    async def set_receive(self, participant: Participant, video: bool) -> None:
        """Audio-only mode on (``video`` false) or off: video is paused at the SFU."""
        participant.receive_video = video
        if participant.subscribe_transport is not None:
            self.router.set_video_paused(participant.subscribe_transport, AUDIO_ONLY, not video)
        self._send_forwarding(participant)

    async def pin(self, participant: Participant, pinned: list[str]) -> None:
        if len(pinned) > MAX_PINS:
            raise BadRequest(f"at most {MAX_PINS} participants can be pinned")
        participant.pins = frozenset(pinned)
        self._apply_forwarding([participant])

    async def set_last_n(self, host: Participant, last_n: int) -> None:
        if not host.can("moderate"):
            raise Forbidden("only a host can change how many videos are received")
        record = await self.store.set_last_n(self.id, last_n)
        self.last_n = record.last_n
        await self._broadcast({"type": "room", **self.describe()})
        self._apply_forwarding()

    def _apply_forwarding(self, viewers: list[Participant] | None = None) -> None:
        """Pause or resume each viewer's camera consumers by last-N and pins."""
        ranking = self._order.ranking()
        cameras = {p.id for p in self.participants.values() if p.publishing("camera")}
        for viewer in self.participants.values() if viewers is None else viewers:
            chosen = cameras_for(viewer.id, ranking, cameras, self.last_n, viewer.pins)
            for consumer in viewer.consumers.values():
                producer = consumer.producer
                if producer.kind == "video" and producer.source == "camera":
                    consumer.set_paused(producer.owner not in chosen, LAST_N)
            self._send_forwarding(viewer)
        self.router.check_sent_layers()  # a camera that came into view needs its layers now

    def _send_forwarding(self, viewer: Participant) -> None:
        """Send ``forwarding`` when the set of participants whose video flows to ``viewer``
        changed (consumers paused for whatever reason, or given no layer by the router's
        bandwidth allocation, do not count), or whether the router cut video for bandwidth."""
        video = tuple(sorted({c.producer.owner for c in viewer.consumers.values()
                              if c.producer.kind == "video" and c.forwarding}))
        transport = viewer.subscribe_transport
        low = transport is not None and self.router.low_bandwidth(transport)
        if (video, low) != viewer.forwarded:
            viewer.forwarded = (video, low)
            self._spawn(viewer.send({"type": "forwarding", "video": list(video),
                                     "low_bandwidth": low}))

    # -- meeting -------------------------------------------------------------------------------

    async def chat(self, participant: Participant, text: str) -> None:
        if not participant.can("chat"):
            raise Forbidden("this role cannot chat")
        record = await self.store.add_chat(self.meeting.id, participant.id, participant.name,
                                           text, self._clock())
        await self._broadcast(_chat_message(record))

    async def hand(self, participant: Participant, raised: bool) -> None:
        if not participant.can("raise-hand"):
            raise Forbidden("this role cannot raise a hand")
        participant.hand = raised
        if raised and participant.id not in self.queue:
            self.queue.append(participant.id)
        elif not raised and participant.id in self.queue:
            self.queue.remove(participant.id)
        await self._send_queue()
        await self._updated(participant)

    async def mute(self, host: Participant, target_id: str) -> None:
        target = self._moderated(host, target_id)
        target.muted_by_host = True
        target.enabled["microphone"] = False
        producer = target.producers.get("microphone")
        if producer is not None:
            producer.set_paused(True)
        await target.send({"type": "muted", "by": host.id})
        await self._updated(target)

    async def remove(self, host: Participant, target_id: str) -> None:
        target = self._moderated(host, target_id)
        self._banned.add(target.token_id)
        outbox = target.outbox
        target.outbox = None
        await self.leave(target)
        if outbox is not None:
            await outbox.close(4403, "removed by host")

    async def lock(self, host: Participant, locked: bool) -> None:
        if not host.can("moderate"):
            raise Forbidden("only a host can lock the room")
        self.locked = locked
        await self.store.set_locked(self.id, locked)
        await self._broadcast({"type": "room", **self.describe()})

    def _moderated(self, host: Participant, target_id: str) -> Participant:
        if not host.can("moderate"):
            raise Forbidden("only a host can do that")
        target = self.participants.get(target_id)
        if target is None:
            raise NotFound("unknown participant")
        return target

    # -- sending ---------------------------------------------------------------------------------

    async def _updated(self, participant: Participant) -> None:
        await self._broadcast({"type": "participant-updated",
                               "participant": participant.describe(self.speaking)})

    async def _send_queue(self) -> None:
        await self._broadcast({"type": "queue", "participants": list(self.queue)})

    async def _broadcast(self, message: dict[str, Any], skip: Participant | None = None) -> None:
        targets = [p for p in self.participants.values() if p is not skip and p.connected]
        results = await asyncio.gather(*(p.send(message) for p in targets),
                                       return_exceptions=True)
        for participant, result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                logger.debug("room %s: cannot send to %s: %s", self.id, participant.id, result)


def _chat_message(record: Any) -> dict[str, Any]:
    return {"type": "chat", "id": record.id, "participant": record.participant_id,
            "name": record.name, "text": record.text, "at": record.at}
