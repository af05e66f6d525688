"""Loudest-N audio: when many are unmuted, forward only the few who are speaking.

Decided once per tick (``speaker.TICK``) from the smoothed scores of ``speaker.Voices``; the packet
path only tests ``Producer.selected``. The rules:

- with no more unmuted producers than :attr:`AudioSelection.size`, all are forwarded (nothing to
  save, nothing clipped);
- otherwise only producers that spoke within the last :attr:`~AudioSelection.hangover` seconds
  are candidates (silent unmuted producers cost nobody anything), and a selected one stays
  selected until then, so pauses between words are not cut;
- a producer that starts speaking while a place is free gets it at the next tick, so at most one
  tick of its first syllable is lost;
- when all places are taken by speakers, a newcomer takes the weakest one's place only if its
  fast average is :attr:`~AudioSelection.margin` above it and that one has held its place for
  :attr:`~AudioSelection.hold` seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from townhall.sfu.speaker import Voices


class AudioSelection:
    def __init__(
        self,
        size: int,
        clock: Callable[[], float],
        *,
        hangover: float = 1.0,
        hold: float = 0.5,
        margin: float = 6.0,
        everyone_when_few: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("at least one audio producer must be forwarded")
        self.size = size
        self._clock = clock
        self.hangover = hangover
        self.hold = hold
        self.margin = margin
        #: With no more keys than places, select them all, speaking or not (False: only
        #: speakers ever get a place).
        self.everyone_when_few = everyone_when_few
        #: selected key → when it was selected
        self._selected: dict[str, float] = {}

    @property
    def selected(self) -> frozenset[str]:
        return frozenset(self._selected)

    @property
    def ranked(self) -> tuple[str, ...]:
        """The selected keys, the longest held first (of those selected together, the
        loudest first): an order that changes only when the selection does."""
        return tuple(sorted(self._selected, key=self._selected.__getitem__))

    def update(self, keys: Collection[str], voices: Voices) -> frozenset[str]:
        """Choose among ``keys`` (the unmuted producers) after ``voices`` took this tick."""
        now = self._clock()
        if self.everyone_when_few and len(keys) <= self.size:
            self._selected = {k: self._selected.get(k, now) for k in keys}
            return self.selected

        def fast(key: str) -> float:
            voice = voices.get(key)
            return 0.0 if voice is None else voice.fast

        def recent(key: str) -> bool:
            voice = voices.get(key)
            return voice is not None and now - voice.active_at <= self.hangover

        kept = {k: at for k, at in self._selected.items() if k in keys and recent(k)}
        newcomers = sorted((k for k in keys if k not in kept and recent(k)), key=fast,
                           reverse=True)
        for key in newcomers:
            if len(kept) < self.size:
                kept[key] = now
                continue
            weakest = min(kept, key=fast)
            if fast(key) > fast(weakest) + self.margin and now - kept[weakest] >= self.hold:
                del kept[weakest]
                kept[key] = now
        self._selected = kept
        return self.selected
