"""A router's periodic audio work: who is speaking, the dominant speaker, and loudest-N.

Every ``speaker.TICK`` seconds the router hands its producers to :meth:`AudioActivity.tick`, which
takes each audio producer's level counters (the only per-packet work, in ``Producer.forward``),
updates the smoothed voices, the dominant speaker (``sfu/speaker.py``) and the selection of
forwarded audio (``sfu/audio_selection.py``), and switches ``Producer.selected``. A second,
narrower selection (the loudest ``audio_only``, one by default) is what participants in audio-only
mode receive: the router pauses their other audio consumers (``Router._tick``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from townhall.sfu.audio_selection import AudioSelection
from townhall.sfu.speaker import DominantSpeaker, Voices

if TYPE_CHECKING:
    from townhall.sfu.producer import Producer


@dataclass(frozen=True)
class Activity:
    #: Participants whose microphone made sound within ``SPEAKING_HOLD``.
    speaking: frozenset[str]
    #: The dominant speaker (a participant), or None.
    dominant: str | None
    #: Ids of the audio producers forwarded now.
    forwarded: frozenset[str]
    #: Ids of the audio producers an audio-only participant receives now: the loudest
    #: ``audio_only`` of ``forwarded``, and those without audio levels.
    narrow: frozenset[str] = frozenset()


class AudioActivity:
    def __init__(self, clock: Callable[[], float], loudest: int, audio_only: int = 1) -> None:
        self._clock = clock
        self.speaker = DominantSpeaker(clock)
        self.voices = Voices()
        self.selection = AudioSelection(loudest, clock)
        self.narrow = AudioSelection(min(loudest, audio_only), clock)
        self._last_narrow: frozenset[str] = frozenset()

    def tick(self, producers: Iterable[Producer]) -> Activity:
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
        narrow = self.narrow.update(forwarded, self.voices)  # the loudest of the loudest
        if not narrow:  # in silence the last one heard stays, so their next words are whole
            narrow = self._last_narrow & forwarded
        self._last_narrow = narrow
        for producer in unmuted:
            producer.set_selected(producer.id in forwarded)
        return Activity(
            speaking=frozenset(p.owner for p in unmuted if p.speaking),
            dominant=dominant,
            forwarded=forwarded,
            narrow=narrow | unlevelled,
        )
