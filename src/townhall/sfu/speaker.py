"""Who is speaking, and who is *the* speaker: voice activity and dominant-speaker detection.

Inputs come from the RFC 6464 audio level each audio packet carries. The packet path only adds
to a few integers per producer (``Producer.forward``); every :data:`TICK` seconds the router turns
them into one **score** per producer: the mean of ``SPEAKING_LEVEL + 1 - level`` over the tick's
packets that are louder than ``SPEAKING_LEVEL`` (-dBov), the others counting 0. Silence, and the
sparse packets of Opus DTX, score 0; speech scores about 10–35.

:class:`Voices` smooths the scores per producer into a fast and a slow average and notes since
when each one has been speaking. :class:`DominantSpeaker` picks one of them:

- with nobody dominant, whoever has spoken for :attr:`~DominantSpeaker.onset` seconds becomes it;
- a dominant speaker keeps the place for at least :attr:`~DominantSpeaker.hold` seconds;
- after that, someone else who has spoken for ``onset`` takes over once the dominant one has been
  quiet for :attr:`~DominantSpeaker.handover` seconds, or, while both speak, once their slow
  average has been :attr:`~DominantSpeaker.margin` above the dominant one's for
  :attr:`~DominantSpeaker.overtake` seconds (talking over someone quietly, coughing, or a short
  "yes" do not take the place).

The clock is injected: tests feed level sequences and move time by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: Period of the router's voice activity work, in seconds; the smoothing below assumes it.
TICK = 0.1
#: A smoothed score at least this high is speech.
SPEECH = 3.0
#: Weight of the newest score in the fast average (reacts within a tick or two) and the slow
#: one (about a second).
FAST = 0.5
SLOW = 0.1
#: Pauses between words shorter than this do not end a run of speech, in seconds.
WORD_GAP = 0.4


@dataclass
class Voice:
    """One producer's recent sound."""

    fast: float = 0.0
    slow: float = 0.0
    #: When the fast average last showed speech (-inf: never).
    active_at: float = float("-inf")
    #: Start of the current run of speech, or None.
    since: float | None = None

    def speaking_for(self, now: float) -> float:
        """How long the current run of speech has lasted (0 when not speaking)."""
        return 0.0 if self.since is None else now - self.since


class Voices:
    """Smoothed scores per key (a producer or a participant)."""

    def __init__(self) -> None:
        self.voices: dict[str, Voice] = {}

    def update(self, scores: Mapping[str, float], now: float) -> None:
        """One tick's scores; keys missing from ``scores`` are forgotten."""
        for key in [k for k in self.voices if k not in scores]:
            del self.voices[key]
        for key, score in scores.items():
            voice = self.voices.get(key)
            if voice is None:
                voice = self.voices[key] = Voice()
            voice.fast += FAST * (score - voice.fast)
            voice.slow += SLOW * (score - voice.slow)
            if voice.fast >= SPEECH:
                voice.active_at = now
                if voice.since is None:
                    voice.since = now
            elif now - voice.active_at > WORD_GAP:
                voice.since = None

    def get(self, key: str) -> Voice | None:
        return self.voices.get(key)


class DominantSpeaker:
    """The one participant the room should see: smoothed so that it does not flicker."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        onset: float = 0.2,
        hold: float = 1.0,
        handover: float = 0.4,
        overtake: float = 1.0,
        margin: float = 6.0,
    ) -> None:
        self._clock = clock
        self.onset = onset
        self.hold = hold
        self.handover = handover
        self.overtake = overtake
        self.margin = margin
        self.voices = Voices()
        self.dominant: str | None = None
        self._dominant_since = float("-inf")
        #: candidate → since when its slow average has been ``margin`` above the dominant's
        self._ahead_since: dict[str, float] = {}

    def update(self, scores: Mapping[str, float]) -> str | None:
        """One tick's scores by participant; returns the dominant speaker after it."""
        now = self._clock()
        self.voices.update(scores, now)
        voices = self.voices.voices
        current = voices.get(self.dominant) if self.dominant is not None else None
        if current is None:
            self.dominant = None
        candidates = [(key, voice) for key, voice in voices.items()
                      if key != self.dominant and voice.speaking_for(now) >= self.onset]
        if current is None:
            self._ahead_since.clear()
            if candidates:
                self._take(max(candidates, key=lambda kv: kv[1].slow)[0], now)
            return self.dominant
        for key in [k for k in self._ahead_since if k not in voices]:
            del self._ahead_since[key]
        for key, voice in voices.items():
            if key != self.dominant and voice.slow > current.slow + self.margin:
                self._ahead_since.setdefault(key, now)
            else:
                self._ahead_since.pop(key, None)
        if not candidates or now - self._dominant_since < self.hold:
            return self.dominant
        quiet = now - current.active_at >= self.handover
        eligible = [(key, voice) for key, voice in candidates
                    if quiet or now - self._ahead_since.get(key, now) >= self.overtake]
        if eligible:
            self._take(max(eligible, key=lambda kv: kv[1].slow)[0], now)
        return self.dominant

    def _take(self, key: str, now: float) -> None:
        self.dominant = key
        self._dominant_since = now
        self._ahead_since.clear()
