"""Recognition work of every speaker, run on a few threads in turn.

Each producer the worker hears becomes a :class:`Speaker`: the PCM that arrived since its last turn
and its :class:`~townhall.captions.pipeline.SpeakerPipeline`. The :class:`Scheduler` gives speakers
turns on a small thread pool (one turn at a time by default: Whisper is already multi-threaded,
and the server shares the machine). A turn hands the waiting audio to the pipeline and runs its
blocking ``poll`` (or ``finish``) in a thread, so the event loop never waits for recognition.

Fairness: a speaker is never queued twice and goes to the back of the queue after its turn, so
with *k* active speakers each gets one turn in every *k*. A speaker is not given a new turn sooner
than ``interval`` after its last one ended, which bounds the cost of idle polls without delaying
speech by more than that interval.

The pipeline is touched only from the turn's thread and never by two turns at once: ``feed`` is
called there too, with the audio the event loop buffered.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from townhall.captions.pipeline import Caption

logger = logging.getLogger(__name__)

#: Shortest time between the end of one turn of a speaker and the start of its next.
POLL_INTERVAL = 0.1


class Pipeline(Protocol):
    """What the scheduler needs of :class:`~townhall.captions.pipeline.SpeakerPipeline`."""

    def feed(self, samples: npt.NDArray[np.float32], at: float) -> None: ...

    def poll(self, languages: frozenset[str]) -> list[Caption]: ...

    def finish(self, languages: frozenset[str]) -> list[Caption]: ...


class Speaker:
    """One producer's audio in one room, and where its captions go.

    ``emit`` is called on the event loop with each caption; ``languages`` says, at the start of
    each turn, which translations the room's listeners want.
    """

    def __init__(
        self,
        participant: str,
        producer: str,
        pipeline: Pipeline,
        emit: Callable[[Speaker, Caption], None],
        languages: Callable[[], frozenset[str]],
    ) -> None:
        self.participant = participant
        self.producer = producer
        self.pipeline = pipeline
        self.emit = emit
        self.languages = languages
        self.pending: list[tuple[npt.NDArray[np.float32], float]] = []
        #: Audio arrived since the last ``finish``: an utterance may be open.
        self.open = False
        #: The next turn closes the current utterance.
        self.finish_wanted = False
        #: No more audio will come; the next turn is its last.
        self.retired = False
        self.done = asyncio.Event()
        self.captions = 0

    def __repr__(self) -> str:
        return f"<Speaker {self.participant}/{self.producer}>"

    def take(self) -> list[tuple[npt.NDArray[np.float32], float]]:
        pending, self.pending = self.pending, []
        return pending

    def turn(self, audio: list[tuple[npt.NDArray[np.float32], float]],
             finish: bool, languages: frozenset[str]) -> list[Caption]:
        """Runs in a thread: feed the buffered audio, then poll or finish."""
        for samples, at in audio:
            self.pipeline.feed(samples, at)
        if finish:
            return self.pipeline.finish(languages)
        return self.pipeline.poll(languages)


class Scheduler:
    """Gives speakers turns on ``slots`` threads, round robin."""

    def __init__(self, slots: int = 1, interval: float = POLL_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.slots = slots
        self.interval = interval
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=slots, thread_name_prefix="captions")
        self._ready: collections.deque[Speaker] = collections.deque()
        self._queued: set[Speaker] = set()
        self._running: set[Speaker] = set()
        self._timers: dict[Speaker, asyncio.TimerHandle] = {}
        self._last_turn: dict[Speaker, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Seconds spent in turns, and how many; for logs and the benchmark.
        self.busy = 0.0
        self.turns = 0

    # -- what the media side calls, on the event loop -------------------------------------------

    def feed(self, speaker: Speaker, samples: npt.NDArray[np.float32], at: float) -> None:
        if speaker.retired:
            return
        speaker.pending.append((samples, at))
        speaker.open = True
        self._want(speaker)

    def finish(self, speaker: Speaker, retire: bool = False) -> None:
        """Close the speaker's utterance soon; with ``retire``, forget the speaker afterwards."""
        if speaker.retired:
            return
        speaker.retired = retire
        if speaker.open or speaker.pending:
            speaker.finish_wanted = True
            timer = self._timers.pop(speaker, None)
            if timer is not None:
                timer.cancel()
            self._enqueue(speaker)
        elif retire:
            self._forget(speaker)

    @property
    def active(self) -> int:
        """Speakers with a turn queued or running."""
        return len(self._queued) + len(self._running)

    async def close(self, timeout: float = 5.0) -> None:
        """Let queued turns end (up to ``timeout``), then stop the threads."""
        deadline = self._clock() + timeout
        while (self._ready or self._running) and self._clock() < deadline:
            await asyncio.sleep(0.05)
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- turns ----------------------------------------------------------------------------------

    def _want(self, speaker: Speaker) -> None:
        if speaker in self._queued or speaker in self._running or speaker in self._timers:
            return
        due = self._last_turn.get(speaker, 0.0) + self.interval
        delay = due - self._clock()
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._timers[speaker] = loop.call_later(delay, self._timer_fired, speaker)
        else:
            self._enqueue(speaker)

    def _timer_fired(self, speaker: Speaker) -> None:
        self._timers.pop(speaker, None)
        self._enqueue(speaker)

    def _enqueue(self, speaker: Speaker) -> None:
        if self._closed or speaker in self._queued or speaker in self._running:
            return
        self._queued.add(speaker)
        self._ready.append(speaker)
        self._start_turns()

    def _start_turns(self) -> None:
        while self._ready and len(self._running) < self.slots and not self._closed:
            speaker = self._ready.popleft()
            self._queued.discard(speaker)
            self._running.add(speaker)
            task = asyncio.get_running_loop().create_task(self._turn(speaker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _turn(self, speaker: Speaker) -> None:
        finish = speaker.finish_wanted
        speaker.finish_wanted = False
        if finish:
            speaker.open = False
        audio = speaker.take()
        languages = speaker.languages()
        started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            captions = await loop.run_in_executor(
                self._executor, speaker.turn, audio, finish, languages)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A pipeline bug must not stop the others; the traceback has no transcript text.
            logger.exception("recognition failed for %r", speaker)
            captions = []
        finally:
            self._running.discard(speaker)
            self._last_turn[speaker] = self._clock()
            self.busy += self._clock() - started
            self.turns += 1
        for caption in captions:
            speaker.captions += 1
            speaker.emit(speaker, caption)
        if speaker.finish_wanted or (speaker.retired and (speaker.pending or speaker.open)):
            speaker.finish_wanted = True
            self._enqueue(speaker)
        elif speaker.retired:
            self._forget(speaker)
        elif speaker.pending:
            self._want(speaker)
        self._start_turns()

    def _forget(self, speaker: Speaker) -> None:
        timer = self._timers.pop(speaker, None)
        if timer is not None:
            timer.cancel()
        self._last_turn.pop(speaker, None)
        speaker.done.set()
