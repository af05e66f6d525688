"""A room's captions: the setting, each listener's language, and the captions the worker sends.

The captions worker joins a room as a participant with the ``caption`` permission and sends one
``caption`` message per partial or final result (``docs/protocol.md``). Here each one is checked,
a final one is stored before anything is relayed (so a crash loses nothing that was shown), and
every other participant but caption-role ones gets it in the language they chose. The worker is
told which languages listeners want (``caption-languages``) whenever that set changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from townhall.auth.permissions import CAPTION, MODERATE
from townhall.errors import BadRequest, Conflict, Forbidden
from townhall.languages import is_language
from townhall.rooms.participant import Participant

if TYPE_CHECKING:
    from townhall.rooms.room import LiveRoom

logger = logging.getLogger(__name__)

MAX_UTTERANCE = 128
MAX_TEXT = 4000
MAX_TRANSLATIONS = 32
#: Longest utterance accepted, in seconds.
MAX_DURATION = 3600.0


@dataclass(frozen=True)
class Caption:
    """One ``caption`` message from the worker, checked field by field."""

    participant: str
    utterance: str
    final: bool
    language: str
    text: str
    start: float
    end: float
    translations: dict[str, str]

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Caption:
        """The caption in ``message``; :class:`BadRequest` naming the first bad field."""
        participant = message.get("participant")
        if not isinstance(participant, str) or not 1 <= len(participant) <= 64:
            raise BadRequest("participant must be a participant id")
        utterance = message.get("utterance")
        if not isinstance(utterance, str) or not 1 <= len(utterance) <= MAX_UTTERANCE:
            raise BadRequest(f"utterance must be a string of 1 to {MAX_UTTERANCE} characters")
        final = message.get("final")
        if not isinstance(final, bool):
            raise BadRequest("final must be true or false")
        language = message.get("language")
        if not is_language(language):
            raise BadRequest("language must be an ISO 639-1 code")
        text = _caption_text(message.get("text"), "text")
        start, end = _seconds(message.get("start"), "start"), _seconds(message.get("end"), "end")
        if end < start:
            raise BadRequest("end must not be before start")
        if end - start > MAX_DURATION:
            raise BadRequest(f"an utterance must not be longer than {MAX_DURATION:.0f} seconds")
        translations = message.get("translations", {})
        if not isinstance(translations, dict) or len(translations) > MAX_TRANSLATIONS:
            raise BadRequest(f"translations must be an object of at most {MAX_TRANSLATIONS}")
        for key, value in translations.items():
            if not is_language(key):
                raise BadRequest("translations must be keyed by ISO 639-1 codes")
            _caption_text(value, f"translations.{key}")
        return cls(participant, utterance, final, language, text, start, end, dict(translations))


def parse_language(message: dict[str, Any]) -> str | None:
    """The ``language`` of a ``caption-language`` message: an ISO 639-1 code or null."""
    if "language" not in message:
        raise BadRequest("language must be an ISO 639-1 code or null")
    language = message["language"]
    if language is None:
        return None
    if not is_language(language):
        raise BadRequest("language must be an ISO 639-1 code or null")
    return language


def _caption_text(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadRequest(f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be unix seconds")
    return float(value)


def is_worker(participant: Participant) -> bool:
    """A caption-role participant: it sends captions and never receives them."""
    return participant.can(CAPTION)


class RoomCaptions:
    """The captions side of one live room."""

    def __init__(self, room: LiveRoom, enabled: bool) -> None:
        self.room = room
        self.enabled = enabled
        #: participant id → the language they read captions in (absent: the original)
        self.choices: dict[str, str] = {}
        #: the union of ``choices`` last sent to the worker
        self.languages: frozenset[str] = frozenset()
        #: names of speakers who left (or were here before a restart), so that their last words
        #: still carry their name
        self._former: dict[str, str] = {}
        #: called when ``enabled`` changes (the worker's list of rooms follows it)
        self.on_change: Callable[[], None] | None = None

    # -- the room setting ------------------------------------------------------------------

    async def set_enabled(self, host: Participant, enabled: bool) -> None:
        """A host turns captions on or off."""
        if not host.can(MODERATE):
            raise Forbidden("only a host can turn captions on or off")
        await self.room.store.set_captions(self.room.id, enabled)
        await self.apply(enabled)

    async def apply(self, enabled: bool) -> None:
        """The stored setting changed (through a host or the HTTP API): tell everyone."""
        changed = enabled != self.enabled
        self.enabled = enabled
        await self._send_all({"type": "captions", "enabled": enabled})
        if changed:
            logger.info("room %s: captions %s", self.room.id, "on" if enabled else "off")
            if self.on_change is not None:
                self.on_change()

    # -- listeners' languages ----------------------------------------------------------------

    async def set_language(self, participant: Participant, language: str | None) -> None:
        if language is None:
            self.choices.pop(participant.id, None)
        else:
            self.choices[participant.id] = language
        await self._languages_changed()

    async def welcomed(self, participant: Participant) -> None:
        """After ``joined``: the worker learns at once which languages are wanted."""
        if is_worker(participant):
            await participant.send(self._languages_message())

    async def left(self, participant: Participant) -> None:
        self._former[participant.id] = participant.name
        if self.choices.pop(participant.id, None) is not None:
            await self._languages_changed()

    async def _languages_changed(self) -> None:
        wanted = frozenset(
            language for pid, language in self.choices.items()
            if pid in self.room.participants and not is_worker(self.room.participants[pid])
        )  # fmt: skip
        if wanted == self.languages:
            return
        self.languages = wanted
        message = self._languages_message()
        await _send_each(
            [p for p in self.room.participants.values() if is_worker(p)], lambda _: message
        )

    def _languages_message(self) -> dict[str, Any]:
        return {"type": "caption-languages", "languages": sorted(self.languages)}

    # -- captions ----------------------------------------------------------------------------

    async def publish(self, worker: Participant, caption: Caption) -> None:
        """A caption from the worker: store it if final, then relay it to every listener."""
        if not is_worker(worker):
            raise Forbidden("only the captions worker can send captions")
        if not self.enabled:
            raise Conflict("captions are off in this room")
        speaker = self.room.participants.get(caption.participant)
        if speaker is not None and is_worker(speaker):
            raise BadRequest("participant must be someone who speaks, not a captions worker")
        name = speaker.name if speaker is not None else await self._former_name(
            caption.participant)
        if name is None:
            raise BadRequest("participant is not in this meeting")
        if caption.final and caption.text.strip():
            _, created = await self.room.store.add_caption(
                self.room.meeting.id, caption.participant, name, caption.utterance,
                caption.start, caption.end, caption.language, caption.text,
                caption.translations,
            )  # fmt: skip
            if not created:
                logger.debug("room %s: caption %s was stored before", self.room.id,
                             caption.utterance[:40])
        listeners = [p for p in self.room.participants.values() if not is_worker(p)]
        await _send_each(listeners, lambda p: _caption_message(
            caption, name, self.choices.get(p.id)))

    async def _former_name(self, participant_id: str) -> str | None:
        """The name of someone who spoke in this meeting and is gone (maybe before a restart)."""
        if participant_id not in self._former:
            for row in await self.room.store.attendance(self.room.meeting.id):
                if row.role != "caption":
                    self._former.setdefault(row.participant_id, row.name)
        return self._former.get(participant_id)

    async def _send_all(self, message: dict[str, Any]) -> None:
        await _send_each(list(self.room.participants.values()), lambda _: message)


def _caption_message(caption: Caption, name: str, wanted: str | None) -> dict[str, Any]:
    """The caption as one listener reads it: in ``wanted`` where a translation exists."""
    translated = wanted if wanted is not None and wanted != caption.language \
        and wanted in caption.translations else None
    return {
        "type": "caption",
        "participant": caption.participant,
        "name": name,
        "utterance": caption.utterance,
        "final": caption.final,
        "language": caption.language,
        "text": caption.text if translated is None else caption.translations[translated],
        "original": caption.text,
        "translated": translated,
    }


async def _send_each(
    targets: list[Participant], message_for: Callable[[Participant], dict[str, Any]]
) -> None:
    targets = [p for p in targets if p.connected]
    results = await asyncio.gather(*(p.send(message_for(p)) for p in targets),
                                   return_exceptions=True)
    for participant, result in zip(targets, results, strict=True):
        if isinstance(result, Exception):
            logger.debug("cannot send to %s: %s", participant.id, result)
