"""Per-consumer rewriting of sequence numbers and timestamps.

A consumer's output must be one continuous stream even when forwarding pauses (a muted source, a
paused consumer) or the producer behind it changes (the room's current speaker). The rewriter keeps
an offset for each; when a new input run starts it picks offsets so that the output continues one
sequence number after the last packet sent and the timestamp advances by the wall-clock gap.
"""

from __future__ import annotations

from collections.abc import Callable


class SequenceRewriter:
    __slots__ = (
        "_clock",
        "_clock_rate",
        "_last_in_seq",
        "_last_out_seq",
        "_last_out_ts",
        "_last_sent_at",
        "_seq_offset",
        "_started",
        "_ts_offset",
    )

    def __init__(self, clock_rate: int, clock: Callable[[], float]) -> None:
        self._clock_rate = clock_rate
        self._clock = clock
        self._seq_offset = 0
        self._ts_offset = 0
        self._started = False
        self._last_in_seq = 0
        self._last_out_seq = 0
        self._last_out_ts = 0
        self._last_sent_at = 0.0

    def restart(self) -> None:
        """The next packet starts a new run (after a pause or a change of producer)."""
        self._started = False

    def rewrite(self, sequence: int, timestamp: int) -> tuple[int, int]:
        """Output (sequence, timestamp) for an input packet."""
        if not self._started:
            if self._last_sent_at:
                gap = max(1, int((self._clock() - self._last_sent_at) * self._clock_rate))
                self._seq_offset = (self._last_out_seq + 1 - sequence) & 0xFFFF
                self._ts_offset = (self._last_out_ts + gap - timestamp) & 0xFFFFFFFF
            self._started = True
        out_seq = (sequence + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if ((out_seq - self._last_out_seq) & 0xFFFF) < 0x8000 or not self._last_sent_at:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_in_seq = sequence
        self._last_sent_at = self._clock()
        return out_seq, out_ts

    def input_sequence(self, out_sequence: int) -> int | None:
        """The input sequence number an output one came from, if it is in the current run."""
        if not self._started:
            return None
        sequence = (out_sequence - self._seq_offset) & 0xFFFF
        if ((self._last_in_seq - sequence) & 0xFFFF) >= 0x8000:
            return None  # in the future of what was sent
        return sequence

    def output_timestamp(self, timestamp: int) -> int:
        return (timestamp + self._ts_offset) & 0xFFFFFFFF

    @property
    def last_output(self) -> tuple[int, int]:
        return self._last_out_seq, self._last_out_ts
