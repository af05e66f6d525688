"""Voice activity and utterance segmentation for one speaker.

Voice activity comes from Silero VAD (the ONNX model bundled with faster-whisper, run by
onnxruntime on the CPU, offline): one speech probability per 32 ms window of 512 samples, the
model's recurrent state carried from window to window. One ``SileroModel`` (the ONNX session) is
shared by every speaker; each speaker has its own ``SileroStream`` (state and context).

The ``Segmenter`` turns probabilities into utterances, counting time in samples (so it needs no
clock and is deterministic):

- speech starts at the first window whose probability reaches ``threshold``; the utterance keeps
  ``pre_roll`` seconds of audio before it;
- speech goes on until the probability has dipped below ``neg_threshold`` and no window has reached
  ``threshold`` for ``end_silence`` seconds; the utterance keeps ``post_roll`` seconds after the
  last speech window;
- a gap of at least ``pause`` seconds inside an utterance is recorded as a pause: a good place to
  cut (the recognizer commits text there, see ``pipeline.py``);
- an utterance that reaches ``max_utterance`` seconds is cut at its latest pause (if one lies in
  the last ``cut_window`` seconds, else right there) and the rest goes on as a new utterance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

RATE = 16000
WINDOW = 512  # samples per VAD window (32 ms)
CONTEXT = 64  # samples of the previous window the model sees with each window

Samples = npt.NDArray[np.float32]


class VoiceActivity(Protocol):
    """A speaker's voice activity detector: windows of ``WINDOW`` samples → speech probabilities."""

    def probabilities(self, windows: Samples) -> npt.NDArray[np.float32]:
        """``windows`` has shape (n, WINDOW), in order; returns n probabilities in [0, 1]."""
        ...


class SileroModel:
    """The Silero VAD ONNX session, shared by all speakers (sessions are thread-safe)."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        if path is None:
            path = Path(get_assets_path()) / "silero_vad_v6.onnx"
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session: Any = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=options
        )

    def stream(self) -> SileroStream:
        return SileroStream(self)


class SileroStream:
    """One speaker's VAD: the model's recurrent state and the last ``CONTEXT`` samples."""

    def __init__(self, model: SileroModel) -> None:
        self._session = model.session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def probabilities(self, windows: Samples) -> npt.NDArray[np.float32]:
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        previous = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        batch = np.ascontiguousarray(np.concatenate([previous, windows], axis=1), np.float32)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class SegmenterConfig:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    end_silence: float = 0.5
    pause: float = 0.2
    pre_roll: float = 0.2
    post_roll: float = 0.15
    max_utterance: float = 15.0
    cut_window: float = 5.0


@dataclass
class Utterance:
    """One stretch of speech. Sample positions count from the speaker's first fed sample."""

    start: int  # position of audio[0] (pre-roll included)
    speech_start: int  # first sample of the first speech window
    audio: _Buffer
    speech_end: int = 0  # end of the last speech window so far
    speech_samples: int = 0  # samples in windows at or over the threshold
    pauses: list[int] = field(default_factory=list)  # gap midpoints, positions as above
    closed: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    def samples(self, begin: int | None = None, end: int | None = None) -> Samples:
        """The audio between two positions (defaults: the whole utterance)."""
        first = 0 if begin is None else max(0, begin - self.start)
        last = len(self.audio) if end is None else max(first, end - self.start)
        return self.audio.view()[first:last]


class Segmenter:
    def __init__(self, vad: VoiceActivity, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self._vad = vad
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # position of the next window's first sample
        self._history = np.zeros(0, dtype=np.float32)  # last pre_roll seconds while idle
        self._current: Utterance | None = None
        self._quiet = 0  # samples since the last speech window
        self._dipped = False  # a window under neg_threshold since the last speech window
        self._gap_recorded = False
        c = self.config
        self._pre_roll = int(c.pre_roll * RATE)
        self._post_roll = int(c.post_roll * RATE)
        self._end_silence = int(c.end_silence * RATE)
        self._pause = int(c.pause * RATE)
        self._max = int(c.max_utterance * RATE)
        self._cut_window = int(c.cut_window * RATE)

    @property
    def current(self) -> Utterance | None:
        """The open utterance, if speech is going on."""
        return self._current

    @property
    def position(self) -> int:
        """Samples fed so far (a partial window waits for the rest)."""
        return self._position + len(self._pending)

    def push(self, samples: Samples) -> list[Utterance]:
        """Add audio; return the utterances that closed (in order)."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        count = len(data) // WINDOW
        self._pending = data[count * WINDOW :]
        if count == 0:
            return []
        windows = data[: count * WINDOW].reshape(count, WINDOW)
        probabilities = self._vad.probabilities(windows)
        closed: list[Utterance] = []
        for window, probability in zip(windows, probabilities, strict=True):
            closed.extend(self._step(window, float(probability)))
        return closed

    def close(self) -> Utterance | None:
        """End the open utterance now (the speaker left or went quiet); pending audio is dropped."""
        self._pending = np.zeros(0, dtype=np.float32)
        utterance = self._current
        if utterance is None:
            return None
        self._current = None
        self._history = np.zeros(0, dtype=np.float32)
        self._trim(utterance)
        utterance.closed = True
        return utterance

    def _step(self, window: Samples, probability: float) -> list[Utterance]:
        position = self._position
        self._position += WINDOW
        c = self.config
        utterance = self._current
        if utterance is None:
            if probability >= c.threshold:
                audio = _Buffer(self._max + self._pre_roll + WINDOW)
                audio.extend(self._history)
                audio.extend(window)
                utterance = Utterance(
                    start=position - len(self._history), speech_start=position, audio=audio
                )
                utterance.speech_end = position + WINDOW
                utterance.speech_samples = WINDOW
                self._current = utterance
                self._quiet = 0
                self._dipped = False
                self._gap_recorded = False
            else:
                self._history = np.concatenate([self._history, window])[-self._pre_roll :]
            return []

        utterance.audio.extend(window)
        if probability >= c.threshold:
            utterance.speech_end = position + WINDOW
            utterance.speech_samples += WINDOW
            self._quiet = 0
            self._dipped = False
            self._gap_recorded = False
        else:
            self._quiet += WINDOW
            self._dipped = self._dipped or probability < c.neg_threshold
            if self._dipped and self._quiet >= self._pause and not self._gap_recorded:
                utterance.pauses.append(utterance.speech_end + self._pause // 2)
                self._gap_recorded = True
            if self._dipped and self._quiet >= self._end_silence:
                self._current = None
                self._history = utterance.samples()[-self._pre_roll :].copy()
                self._trim(utterance)
                utterance.closed = True
                return [utterance]
        if len(utterance.audio) > self._max - WINDOW:
            return [self._cut(utterance)]
        return []

    def _trim(self, utterance: Utterance) -> None:
        keep = min(utterance.end, utterance.speech_end + self._post_roll) - utterance.start
        utterance.audio.truncate(max(keep, 0))

    def _cut(self, utterance: Utterance) -> Utterance:
        """Close an utterance at its maximum length; the rest starts the next one."""
        earliest = utterance.end - self._cut_window
        pauses = [p for p in utterance.pauses if p > max(earliest, utterance.speech_start)]
        cut = pauses[-1] if pauses else utterance.end
        rest = utterance.samples(cut)
        audio = _Buffer(self._max + self._pre_roll + WINDOW)
        audio.extend(rest)
        following = Utterance(start=cut, speech_start=cut, audio=audio)
        following.speech_end = max(cut, utterance.speech_end)
        following.speech_samples = min(utterance.speech_samples, max(0, following.speech_end - cut))
        utterance.speech_samples -= following.speech_samples
        utterance.speech_end = min(utterance.speech_end, cut)
        utterance.pauses = [p for p in utterance.pauses if p < cut]
        utterance.audio.truncate(cut - utterance.start)
        utterance.closed = True
        self._current = following
        return utterance


class _Buffer:
    """A growing float32 array with room reserved up front."""

    def __init__(self, capacity: int) -> None:
        self._data = np.zeros(max(capacity, WINDOW), dtype=np.float32)
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def extend(self, samples: Samples) -> None:
        needed = self._length + len(samples)
        if needed > len(self._data):
            grown = np.zeros(max(needed, 2 * len(self._data)), dtype=np.float32)
            grown[: self._length] = self._data[: self._length]
            self._data = grown
        self._data[self._length : needed] = samples
        self._length = needed

    def truncate(self, length: int) -> None:
        self._length = min(self._length, length)

    def view(self) -> Samples:
        return self._data[: self._length]
