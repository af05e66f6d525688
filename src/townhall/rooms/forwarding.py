"""Who receives whose video: last-N by recent dominant speakers, plus pins.

Each participant receives the cameras of the ``last_n`` participants who were most recently the
dominant speaker (those who never were follow in the order they joined), plus the ones they
pinned. Screen shares are always forwarded, and an audio-only participant receives no video at
all (the router pauses its whole transport; see ``LiveRoom.set_receive``). Everything here is
pure: the room calls it whenever the order, the cameras, N or a participant's pins change, and
pauses or resumes consumers at the SFU with the answer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


class SpeakerOrder:
    """The participants of a meeting, most recent dominant speaker first.

    Those who have not been the dominant speaker yet follow, in the order they joined.
    """

    def __init__(self) -> None:
        self._spoke: list[str] = []  # most recent first
        self._joined: list[str] = []

    def joined(self, participant: str) -> None:
        if participant not in self._joined:
            self._joined.append(participant)

    def left(self, participant: str) -> None:
        if participant in self._joined:
            self._joined.remove(participant)
        if participant in self._spoke:
            self._spoke.remove(participant)

    def spoke(self, participant: str) -> bool:
        """``participant`` became the dominant speaker; returns whether the order changed."""
        if participant not in self._joined:
            return False
        if self._spoke and self._spoke[0] == participant:
            return False
        if participant in self._spoke:
            self._spoke.remove(participant)
        self._spoke.insert(0, participant)
        return True

    def ranking(self) -> list[str]:
        spoke = set(self._spoke)
        return self._spoke + [p for p in self._joined if p not in spoke]


def cameras_for(
    viewer: str,
    ranking: Iterable[str],
    cameras: Collection[str],
    last_n: int,
    pins: Collection[str] = (),
) -> frozenset[str]:
    """The participants whose camera ``viewer`` receives.

    ``ranking`` is ``SpeakerOrder.ranking()``; ``cameras`` the participants whose camera is on.
    The viewer's own camera never counts, and a participant without a camera takes no place
    among the ``last_n``. Pinned participants are added on top of the ``last_n``.
    """
    chosen: list[str] = []
    for participant in ranking:
        if len(chosen) >= last_n:
            break
        if participant != viewer and participant in cameras:
            chosen.append(participant)
    return frozenset(chosen) | frozenset(p for p in pins if p != viewer and p in cameras)
