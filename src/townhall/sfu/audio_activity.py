"""A router's periodic audio work: who is speaking, the dominant speaker, and loudest-N.

Every ``speaker.TICK`` seconds the router hands its producers to :meth:`AudioActivity.tick`, which
takes each audio producer's level counters (the only per-packet work, in ``Producer.forward``),
updates the smoothed voices, the dominant speaker (``sfu/speaker.py``) and the selection of
forwarded audio (``sfu/audio_selection.py``), and switches ``Producer.selected``. A second,
narrower selection (the loudest ``audio_only``, one by default) is what participants in audio-only
mode receive: the router pauses their other audio consumers (``Router._tick``).

When the native piece is built, the whole tick runs in C (``AudioTick`` in ``_audio.c``), its
state held there; the results are the same to the last bit (a twin test runs both paths on the
same random meetings), so this module stays the reference and the path without the piece.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from townhall.sfu import native, speaker
from townhall.sfu import producer as producer_module
from townhall.sfu.audio_selection import AudioSelection
from townhall.sfu.speaker import DominantSpeaker, Voices

if TYPE_CHECKING:
    from townhall.sfu.producer import Producer


class Activity(NamedTuple):
    #: Participants whose microphone made sound within ``SPEAKING_HOLD``.
    speaking: frozenset[str]
    #: The dominant speaker (a participant), or None.
    dominant: str | None
    #: Ids of the audio producers forwarded now.
    forwarded: frozenset[str]
    #: The loudest of ``forwarded``, the longest held first (one more than an audio-only
    #: participant receives, since one may be their own): see ``AudioActivity.for_audio_only``.
    ranked: tuple[str, ...] = ()
    #: Producers without audio levels (always forwarded: nothing tells speech from silence).
    unlevelled: frozenset[str] = frozenset()


def _native_tick() -> Any:
    """The ``AudioTick`` class of the compiled module, or None (not built, or built before it
    had one)."""
    loaded = native.load()
    return None if loaded is None else getattr(loaded.module, "AudioTick", None)


#: The tick in C (``_audio.c``) when the native piece is built with it; None: in Python.
native_tick = _native_tick()


def _selection(selection: AudioSelection) -> tuple[int, float, float, float, bool]:
    return (selection.size, selection.hangover, selection.hold, selection.margin,
            selection.everyone_when_few)


class AudioActivity:
    def __init__(self, clock: Callable[[], float], loudest: int, audio_only: int = 1, *,
                 native: bool = True) -> None:
        """``native``: tick in C when the native piece has it (tests ask for either path)."""
        self._clock = clock
        # With the tick in C these four only give it their parameters (one source of truth):
        # its state is its own.
        self.speaker = DominantSpeaker(clock)
        self.voices = Voices()
        self.selection = AudioSelection(loudest, clock)
        self.audio_only = audio_only
        self.narrow = AudioSelection(min(loudest, audio_only + 1), clock, everyone_when_few=False)
        self._last_ranked: tuple[str, ...] = ()
        found = native_tick if native else None
        self._native: Any = None if found is None else found(
            Activity,
            voices=(speaker.SPEECH, speaker.FAST, speaker.SLOW, speaker.WORD_GAP),
            speaker=(self.speaker.onset, self.speaker.hold, self.speaker.handover,
                     self.speaker.overtake, self.speaker.margin),
            speaking_hold=producer_module.SPEAKING_HOLD,
            selection=_selection(self.selection),
            narrow=_selection(self.narrow),
        )

    @property
    def native(self) -> bool:
        """Whether the tick runs in C."""
        return self._native is not None

    def tick(self, producers: Iterable[Producer]) -> Activity:
        if self._native is not None:
            # One reading of the clock for the whole tick (Python reads it several times: the
            # same time under the injected clocks of tests).
            activity: Activity = self._native.tick(producers, self._clock())
            return activity
        scores: dict[str, float] = {}
        by_owner: dict[str, float] = {}
        unmuted: list[Producer] = []
        unlevelled: set[str] = set()
        for producer in producers:
            if producer.kind != "audio":
                continue
            score = producer.take_levels()
            if producer.paused:
                score = 0.0  # muted: still in the meeting, not a candidate for anything
            elif producer.level_extension is None:
                # No audio levels (a publisher that did not negotiate them): nothing tells
                # its speech from silence, so it is always forwarded.
                producer.set_selected(True)
                unlevelled.add(producer.id)
            else:
                scores[producer.id] = score
                unmuted.append(producer)
            by_owner[producer.owner] = max(score, by_owner.get(producer.owner, 0.0))
        self.voices.update(scores, self._clock())
        dominant = self.speaker.update(by_owner)
        forwarded = self.selection.update(scores.keys(), self.voices)
        self.narrow.update(forwarded, self.voices)  # the loudest of the loudest
        ranked = self.narrow.ranked
        if not ranked:  # in silence the last ones heard stay, so their next words are whole
            ranked = tuple(k for k in self._last_ranked if k in forwarded)
        self._last_ranked = ranked
        for producer in unmuted:
            producer.set_selected(producer.id in forwarded)
        return Activity(
            speaking=frozenset(p.owner for p in unmuted if p.speaking),
            dominant=dominant,
            forwarded=forwarded,
            ranked=ranked,
            unlevelled=frozenset(unlevelled),
        )

    def for_audio_only(self, activity: Activity, candidates: Collection[str]) -> frozenset[str]:
        """Which of ``candidates`` (the forwarded producers a transport consumes: never its own)
        an audio-only transport receives: all while there are no more than ``audio_only``,
        else the loudest ``audio_only`` of them, and always those without audio levels."""
        if len(candidates) <= self.audio_only:
            return frozenset(candidates)
        loudest = [k for k in activity.ranked if k in candidates][:self.audio_only]
        return frozenset(loudest) | (activity.unlevelled & frozenset(candidates))
