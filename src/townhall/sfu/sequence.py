"""Per-consumer rewriting of sequence numbers and timestamps.

A consumer's output must be one continuous stream even when forwarding pauses (a muted source, a
paused consumer) or the producer behind it changes (the room's current speaker). The rewriter keeps
an offset for each; when a new input run starts it picks offsets so that the output continues one
sequence number after the last packet sent and the timestamp advances by the wall-clock gap.

A consumer may also slip padding packets of its own in between frames (bandwidth probes,
``pad``): each moves the later output one sequence number on. The rewriter remembers the last
``MAX_PADDING`` of them, so late input packets and NACKs still map correctly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from townhall.sfu.fields import SequenceFields

#: Padding packets remembered for mapping late packets and NACKs.
MAX_PADDING = 256


class SequenceRewriter(SequenceFields):
    __slots__ = ("_clock", "_clock_rate", "_padding", "_padding_lost", "_run_first")

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
        #: (last input sequence before it, output sequence) of each padding packet of this run.
        self._padding: deque[tuple[int, int]] = deque(maxlen=MAX_PADDING)
        #: Output sequence of the newest padding packet forgotten (-1: none forgotten).
        self._padding_lost = -1
        #: Output sequence of the first packet of this run.
        self._run_first = 0

    def restart(self) -> None:
        """The next packet starts a new run (after a pause or a change of producer)."""
        self._started = False
        self._padding.clear()
        self._padding_lost = -1

    def pad(self) -> tuple[int, int]:
        """(sequence, timestamp) for a padding packet sent after the last packet; later
        packets move one sequence number on."""
        out_seq = (self._last_out_seq + 1) & 0xFFFF
        if len(self._padding) == MAX_PADDING:
            self._padding_lost = self._padding[0][1]
        self._padding.append((self._last_in_seq, out_seq))
        self._last_out_seq = out_seq
        self._seq_offset = (self._seq_offset + 1) & 0xFFFF
        return out_seq, self._last_out_ts

    def rewrite(self, sequence: int, timestamp: int) -> tuple[int, int]:
        """Output (sequence, timestamp) for an input packet."""
        starting = not self._started
        if starting:
            self._start(sequence, timestamp)
        offset = self._seq_offset
        if self._padding and ((sequence - self._last_in_seq) & 0xFFFF) >= 0x8000:
            # A late packet: padding sent after its place does not move it.
            offset -= sum(1 for before, _ in self._padding
                          if ((before - sequence) & 0xFFFF) < 0x8000)
        out_seq = (sequence + offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if starting:
            self._run_first = out_seq
        # the common case first: the next packet in order (``_last_sent_at`` is set after the
        # first packet ever sent)
        if ((out_seq - self._last_out_seq) & 0xFFFF) < 0x8000 or not self._last_sent_at:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_in_seq = sequence
        self._last_sent_at = self._clock()
        return out_seq, out_ts

    def _start(self, sequence: int, timestamp: int) -> None:
        """Offsets for a new run: one sequence number after the last packet sent, and the
        timestamp moved on by the wall-clock time since then."""
        if self._last_sent_at:
            gap = max(1, int((self._clock() - self._last_sent_at) * self._clock_rate))
            self._seq_offset = (self._last_out_seq + 1 - sequence) & 0xFFFF
            self._ts_offset = (self._last_out_ts + gap - timestamp) & 0xFFFFFFFF
        self._started = True

    def input_sequence(self, out_sequence: int) -> int | None:
        """The input sequence number an output one came from, if it is in the current run."""
        if not self._started:
            return None
        if ((out_sequence - self._run_first) & 0xFFFF) >= 0x8000:
            return None  # sent in an earlier run: of another layer or producer
        offset = self._seq_offset
        if self._padding or self._padding_lost >= 0:
            last = self._last_out_seq
            if self._padding_lost >= 0 and \
                    ((last - out_sequence) & 0xFFFF) >= ((last - self._padding_lost) & 0xFFFF):
                return None  # before padding the rewriter no longer remembers
            for _, padding in self._padding:
                if padding == out_sequence:
                    return None
                if ((padding - out_sequence) & 0xFFFF) < 0x8000:
                    offset -= 1  # sent after this one
        sequence = (out_sequence - offset) & 0xFFFF
        if ((self._last_in_seq - sequence) & 0xFFFF) >= 0x8000:
            return None  # in the future of what was sent
        return sequence

    def output_timestamp(self, timestamp: int) -> int:
        return (timestamp + self._ts_offset) & 0xFFFFFFFF

    @property
    def last_output(self) -> tuple[int, int]:
        return self._last_out_seq, self._last_out_ts
