"""A meeting's transcript, written from its stored final captions as WebVTT or JSON.

WebVTT (https://www.w3.org/TR/webvtt1/): one cue per caption, the speaker as a voice span
(``<v Name>``), times from the start of the meeting. Cue text and voice names are escaped
(``&amp;``, ``&lt;``, ``&gt;``), so no caption can end a cue, open a tag or write ``-->``; line
breaks inside a caption stay inside its cue. JSON keeps everything stored, times in unix seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from townhall.errors import BadRequest
from townhall.store.records import CaptionRecord, MeetingRecord

FORMATS = ("json", "vtt")
CONTENT_TYPES = {"json": "application/json", "vtt": "text/vtt"}
#: A cue must end after it starts; a caption with no duration gets this much.
MIN_CUE = 0.001

_SPACE = re.compile(r"\s+")


def text_in(caption: CaptionRecord, language: str | None) -> str:
    """The caption's text in ``language`` where it was translated to it, else as spoken."""
    if language is not None and language != caption.language:
        return caption.translations.get(language, caption.text)
    return caption.text


def timestamp(seconds: float) -> str:
    """``hh:mm:ss.ttt`` (hours grow past two digits if they must)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cue_text(text: str) -> str:
    """Escaped, with no empty line (which would end the cue)."""
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(escape(line) for line in lines if line)


def _voice(name: str) -> str:
    return escape(_SPACE.sub(" ", name).strip()) or "Someone"


def to_webvtt(
    meeting: MeetingRecord, captions: Sequence[CaptionRecord], language: str | None = None
) -> str:
    """The transcript as a WebVTT file; with ``language``, captions translated to it."""
    started = datetime.fromtimestamp(meeting.started_at, tz=UTC).isoformat(timespec="seconds")
    blocks = [
        "WEBVTT",
        f"NOTE\nTranscript of meeting {meeting.id}, started {started}.\n"
        "Times are from the start of the meeting.",
    ]
    number = 0
    for caption in captions:
        text = _cue_text(text_in(caption, language))
        if not text:
            continue
        number += 1
        start = max(0.0, caption.start - meeting.started_at)
        end = max(start + MIN_CUE, caption.end - meeting.started_at)
        blocks.append(f"{number}\n{timestamp(start)} --> {timestamp(end)}\n"
                      f"<v {_voice(caption.name)}>{text}")
    return "\n\n".join(blocks) + "\n"


def to_dict(meeting: MeetingRecord, captions: Sequence[CaptionRecord]) -> dict[str, Any]:
    return {
        "meeting": {"id": meeting.id, "room_id": meeting.room_id,
                    "started_at": meeting.started_at, "ended_at": meeting.ended_at},
        "captions": [
            {"participant": c.participant_id, "name": c.name, "utterance": c.utterance,
             "start": c.start, "end": c.end, "language": c.language, "text": c.text,
             "translations": dict(c.translations)}
            for c in captions
        ],
    }  # fmt: skip


def to_json(meeting: MeetingRecord, captions: Sequence[CaptionRecord]) -> str:
    return json.dumps(to_dict(meeting, captions), ensure_ascii=False, indent=2) + "\n"


def write(
    kind: str, meeting: MeetingRecord, captions: Sequence[CaptionRecord],
    language: str | None = None,
) -> str:
    """The transcript in ``kind`` (``json`` or ``vtt``); ``language`` applies to WebVTT."""
    if kind == "vtt":
        return to_webvtt(meeting, captions, language)
    if kind == "json":
        return to_json(meeting, captions)
    raise BadRequest(f"unknown transcript format: {kind!r} (choose from {', '.join(FORMATS)})")
