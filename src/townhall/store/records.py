"""Frozen records the store hands out; never ORM objects. Times are float unix seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoomRecord:
    id: str
    name: str
    created_at: float
    locked: bool
    last_n: int = 6
    captions: bool = False


@dataclass(frozen=True)
class MeetingRecord:
    id: str
    room_id: str
    started_at: float
    ended_at: float | None


@dataclass(frozen=True)
class AttendanceRecord:
    id: int
    meeting_id: str
    participant_id: str
    name: str
    role: str
    joined_at: float
    left_at: float | None


@dataclass(frozen=True)
class ChatRecord:
    id: int
    meeting_id: str
    participant_id: str
    name: str
    text: str
    at: float


@dataclass(frozen=True)
class CaptionRecord:
    id: int
    meeting_id: str
    participant_id: str
    name: str
    utterance: str
    start: float
    end: float
    language: str
    text: str
    translations: dict[str, str]
