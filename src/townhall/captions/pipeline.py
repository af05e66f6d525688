"""The captions engine's contract with the worker: audio in, captions out.

``Engine`` holds what is loaded once per worker process (Whisper, the VAD model, the translation
engines); ``SpeakerPipeline`` follows one speaking participant:

- ``feed`` (event loop, cheap) queues PCM with the unix time of its first sample;
- ``poll`` (a worker thread, blocking) runs the VAD over the queued audio, closes utterances that
  ended (a final caption each), and while speech goes on emits a partial caption for the open
  utterance: the first after ``first_partial`` seconds of speech (later while the language is
  unclear), then every ``partial_interval``
  seconds of new audio (none while the speaker pauses). A poll that falls behind does one partial
  for the latest audio, never one per missed second; when recognition keeps the machine more
  than 60 % busy, partials are spaced out so finals stay on time (``busy.py``);
- ``finish`` closes the open utterance when the speaker leaves or mutes.

Cost is kept bounded: an utterance is cut into finals at ``max_utterance`` seconds (segmenter), and
once the unfinished part of an utterance is longer than ``commit_after`` seconds, its text up to
the latest pause is *committed* (transcribed once, with the final decoding options): partials and
the final then re-transcribe only the audio after the last commit, with the committed text as
Whisper's prompt. The language is detected per utterance and kept for the rest of the utterance
once ``language_after`` seconds of speech have been heard and the detection is sure; the final of
an utterance with nothing committed detects it again on all of its audio.

Every caption carries the translations asked for by ``languages`` that have a route
(``translate.Translations``); a language without one is left out. An utterance whose partials were
sent but turns out to hold no speech is still closed by a final, with empty text.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from townhall.captions.apertium import Apertium
from townhall.captions.busy import BusyMeter
from townhall.captions.recognizer import DecodeOptions, Encoded, Recognizer
from townhall.captions.segmenter import (
    RATE,
    WINDOW,
    Segmenter,
    SegmenterConfig,
    SileroModel,
    Utterance,
    VoiceActivity,
)
from townhall.captions.translate import ModelDirectory, Route, TextTranslator, Translations
from townhall.errors import CaptionsError

logger = logging.getLogger(__name__)

UNSURE = 0.5  # a language detected with less probability is unsure
SURE_AFTER = 1.5  # seconds of speech after which a partial is sent even if unsure
#: Audio lost on the way (frames missing between two that arrived) up to this many seconds is
#: put back as silence, so the words either side keep their timing: Whisper base on three
#: test sentences with 30 % of 20 ms frames dropped, word error rate 0.12 with the rest
#: joined up, 0.06 with silence in the holes. A longer hole starts a new anchor.
MAX_FILL = 0.5


@dataclass(frozen=True)
class Caption:
    utterance: str  # unique id
    final: bool
    language: str  # ISO 639-1 of the speech, detected per utterance
    text: str
    start: float  # unix seconds
    end: float
    translations: dict[str, str]


@dataclass(frozen=True)
class EngineOptions:
    first_partial: float = 0.5  # seconds of speech before the first partial
    partial_interval: float = 1.0  # seconds of new audio between partials
    commit_after: float = 4.0  # unfinished audio longer than this is committed at a pause
    starved_after: float = 1.0  # no audio fed for this long (clock) closes the utterance
    language_after: float = 2.0  # seconds of speech after which the language is kept
    min_speech: float = 0.25  # utterances with less speech are dropped (clicks, coughs)
    partial: DecodeOptions = field(default_factory=lambda: DecodeOptions(beam_size=1))
    final: DecodeOptions = field(default_factory=lambda: DecodeOptions(beam_size=3))
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    speech_languages: frozenset[str] | None = None  # restrict language detection to these


class Engine:
    """The loaded models, shared by every speaker of a worker process."""

    def __init__(
        self,
        recognizer: Recognizer,
        vad: SileroModel,
        translations: Translations,
        options: EngineOptions | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.vad = vad
        self.translations = translations
        self.options = options or EngineOptions()
        self.busy = BusyMeter()
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._counter_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        asr_model: str,
        translation_models: Path | None = None,
        threads: int = 0,
        *,
        options: EngineOptions | None = None,
    ) -> Engine:
        """Load everything, or raise CaptionsError with a message that says what to fix.

        ``threads``: CPU threads for Whisper and each translation model; 0 means one per core,
        at most 4.
        """
        started = time.monotonic()
        threads = threads or min(4, os.cpu_count() or 1)
        recognizer = Recognizer.load(asr_model, threads)
        try:
            vad = SileroModel()
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CaptionsError(f"cannot load the Silero VAD model: {exc}") from exc
        engines: list[TextTranslator] = []
        problem = Apertium.available()
        if problem is None:
            engines.append(Apertium())
        else:
            logger.warning("no Russian ↔ Ukrainian translation: %s", problem)
        if translation_models is not None:
            engines.append(ModelDirectory(Path(translation_models), threads))
        translations = Translations(engines, speech_to_english=recognizer.multilingual)
        logger.info("captions engine loaded in %.1f s", time.monotonic() - started)
        return cls(recognizer, vad, translations, options)

    def utterance_id(self) -> str:
        with self._counter_lock:
            return f"{self._prefix}-{next(self._counter)}"

    def close(self) -> None:
        """Stop the translation engines' helper processes."""
        self.translations.close()


@dataclass
class _Piece:
    """Committed text: audio between two positions, transcribed once."""

    start: int
    end: int
    text: str
    english: str | None = None  # Whisper's translation, made when first asked for


@dataclass
class _Open:
    """Bookkeeping of the utterance being captioned."""

    id: str
    utterance: Utterance
    committed: int  # position up to which text is committed
    pieces: list[_Piece] = field(default_factory=list)
    language: str | None = None
    language_kept: bool = False
    partials: int = 0
    last_partial: int = 0  # audio position of the last partial
    last_speech: int = 0  # end of the speech the last partial heard
    unsure: bool = False  # the last language detection was unsure


class SpeakerPipeline:
    """One speaking participant: ``feed`` from the event loop, ``poll``/``finish`` from a thread.

    ``feed`` may run while ``poll`` runs; ``poll`` and ``finish`` must not run at the same time.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        vad: VoiceActivity | None = None,
    ) -> None:
        self._engine = engine
        self._options = engine.options
        self._clock = clock
        self._segmenter = Segmenter(vad or engine.vad.stream(), self._options.segmenter)
        self._lock = threading.Lock()
        self._inbox: list[npt.NDArray[np.float32]] = []
        self._fed = 0
        self._last_feed: float | None = None
        self._anchor_positions: list[int] = []
        self._anchor_times: list[float] = []
        self._open: _Open | None = None
        self._speaker_language: str | None = None

    def feed(self, samples: npt.NDArray[np.float32], at: float) -> None:
        """Queue float32 mono 16 kHz PCM whose first sample was heard at unix time ``at``."""
        chunk = np.clip(
            np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1), posinf=1.0,
                          neginf=-1.0),
            -1.0, 1.0,
        )
        now = self._clock()
        with self._lock:
            if self._anchor_times:
                expected = self._anchor_times[-1] + (self._fed - self._anchor_positions[-1]) / RATE
                hole = at - expected
                if 0.019 <= hole <= MAX_FILL:  # a frame or more lost: silence in its place
                    fill = np.zeros(round(hole * RATE), dtype=np.float32)
                    self._inbox.append(fill)
                    self._fed += len(fill)
                elif abs(hole) > 0.05:
                    self._anchor(at)
            else:
                self._anchor(at)
            self._inbox.append(chunk)
            self._fed += len(chunk)
            self._last_feed = now

    def poll(self, languages: frozenset[str]) -> list[Caption]:
        """Do the recognition and translation that is due; blocking."""
        busy = self._engine.busy
        started = busy.now()
        try:
            return self._poll(languages)
        finally:
            busy.add(started, busy.now())

    def finish(self, languages: frozenset[str]) -> list[Caption]:
        """The speaker left or muted: close the current utterance (a final) if any."""
        busy = self._engine.busy
        started = busy.now()
        try:
            return self._finish(languages)
        finally:
            busy.add(started, busy.now())

    def _poll(self, languages: frozenset[str]) -> list[Caption]:
        captions: list[Caption] = []
        for utterance in self._segmenter.push(self._take()):
            captions.extend(self._close(utterance, languages))
        current = self._segmenter.current
        if current is not None and self._starved():
            closed = self._segmenter.close()
            if closed is not None:
                captions.extend(self._close(closed, languages))
            current = None
        if current is not None:
            captions.extend(self._progress(current, languages))
        return captions

    def _finish(self, languages: frozenset[str]) -> list[Caption]:
        captions: list[Caption] = []
        for utterance in self._segmenter.push(self._take()):
            captions.extend(self._close(utterance, languages))
        closed = self._segmenter.close()
        if closed is not None:
            captions.extend(self._close(closed, languages))
        return captions

    # -- audio bookkeeping -------------------------------------------------------------------

    def _anchor(self, at: float) -> None:
        self._anchor_positions.append(self._fed)
        self._anchor_times.append(at)
        if len(self._anchor_positions) > 512:
            del self._anchor_positions[:256]
            del self._anchor_times[:256]

    def _take(self) -> npt.NDArray[np.float32]:
        with self._lock:
            chunks, self._inbox = self._inbox, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks)

    def _starved(self) -> bool:
        with self._lock:
            last = self._last_feed
        return last is not None and self._clock() - last >= self._options.starved_after

    def _time(self, position: int) -> float:
        with self._lock:
            if not self._anchor_positions:
                return self._clock()
            index = max(bisect_right(self._anchor_positions, position) - 1, 0)
            following = index + 1
            if (
                following < len(self._anchor_positions)
                and self._anchor_positions[following] - position < WINDOW
            ):
                # VAD windows straddle a jump in time (the speaker was muted): the speech is
                # on the later side of it.
                return self._anchor_times[following]
            return self._anchor_times[index] + (position - self._anchor_positions[index]) / RATE

    # -- captions ----------------------------------------------------------------------------

    def _state(self, utterance: Utterance) -> _Open:
        if self._open is None or self._open.utterance is not utterance:
            self._open = _Open(self._engine.utterance_id(), utterance, committed=utterance.start)
        return self._open

    def _progress(self, utterance: Utterance, languages: frozenset[str]) -> list[Caption]:
        o = self._options
        if utterance.speech_samples < o.min_speech * RATE:
            return []
        state = self._state(utterance)
        self._maybe_commit(state)
        if state.partials == 0 and state.last_partial == 0:
            due = utterance.end - utterance.speech_start >= o.first_partial * RATE
        else:
            # a pause or the silence before the end adds nothing to transcribe
            interval = o.partial_interval * self._engine.busy.partial_stretch()
            due = (utterance.end - state.last_partial >= interval * RATE
                   and utterance.speech_end > state.last_speech)
        if not due:
            return []
        before = state.last_partial, state.last_speech
        state.last_partial = utterance.end
        state.last_speech = utterance.speech_end
        caption = self._caption(state, final=False, languages=languages)
        if caption is None:
            return []
        if state.unsure and utterance.speech_end - utterance.speech_start < SURE_AFTER * RATE:
            # The language is not clear yet: no partial in a language that may be wrong; try
            # again at the next poll, with more audio.
            state.last_partial, state.last_speech = before
            return []
        state.partials += 1
        return [caption]

    def _close(self, utterance: Utterance, languages: frozenset[str]) -> list[Caption]:
        state = self._open if self._open is not None and self._open.utterance is utterance else None
        self._open = None
        if state is None:
            if utterance.speech_samples < self._options.min_speech * RATE:
                return []
            state = _Open(self._engine.utterance_id(), utterance, committed=utterance.start)
        caption = self._caption(state, final=True, languages=languages)
        if caption is None:
            if state.partials == 0:
                return []
            caption = Caption(
                state.id, True, state.language or self._speaker_language or "en", "",
                self._time(utterance.speech_start), self._time(utterance.speech_end), {},
            )
        else:
            self._speaker_language = caption.language
        return [caption]

    def _maybe_commit(self, state: _Open) -> None:
        utterance = state.utterance
        o = self._options
        if utterance.end - state.committed < o.commit_after * RATE:
            return
        earliest = state.committed + int(1.0 * RATE)
        pauses = [p for p in utterance.pauses if p > earliest and p < utterance.end]
        if not pauses:
            return
        cut = pauses[-1]
        audio = utterance.samples(state.committed, cut)
        recognizer = self._engine.recognizer
        try:
            encoded = recognizer.encode(audio)
            language = self._language(state, encoded, keep=True)
            decoded = recognizer.decode(encoded, language, o.final, prompt=self._committed(state))
        except Exception as exc:
            raise CaptionsError(f"recognition failed: {exc}") from exc
        state.pieces.append(_Piece(state.committed, cut, decoded.text if decoded.speech else ""))
        state.committed = cut

    def _caption(self, state: _Open, final: bool, languages: frozenset[str]) -> Caption | None:
        utterance = state.utterance
        o = self._options
        recognizer = self._engine.recognizer
        tail_audio = utterance.samples(state.committed)
        tail = ""
        encoded: Encoded | None = None
        if len(tail_audio) >= int(0.1 * RATE):
            try:
                encoded = recognizer.encode(tail_audio)
                speech = utterance.speech_end - max(utterance.speech_start, state.committed)
                keep = final or speech >= o.language_after * RATE
                # A final with nothing committed detects again, on the whole utterance: Whisper
                # can be sure and wrong on its first two seconds.
                language = self._language(
                    state, encoded, keep=keep, again=final and not state.pieces
                )
                decoded = recognizer.decode(
                    encoded, language, o.final if final else o.partial,
                    prompt=self._committed(state),
                )
            except CaptionsError:
                raise
            except Exception as exc:
                raise CaptionsError(f"recognition failed: {exc}") from exc
            tail = decoded.text if decoded.speech else ""
        language = state.language or self._speaker_language or "en"
        text = _join([*(p.text for p in state.pieces), tail])
        if not text:
            return None
        translations = self._translations(state, language, text, encoded, tail, final, languages)
        end = utterance.speech_end if final else utterance.end
        return Caption(
            state.id, final, language, text,
            self._time(utterance.speech_start), self._time(end), translations,
        )

    def _committed(self, state: _Open) -> str:
        return _join([p.text for p in state.pieces])

    def _language(self, state: _Open, encoded: Encoded, keep: bool, again: bool = False) -> str:
        if state.language_kept and state.language is not None and not again:
            return state.language
        candidates = self._engine.recognizer.detect_language(
            encoded, self._options.speech_languages
        )
        language, probability = candidates[0]
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("utterance %s: language %s", state.id,
                         ", ".join(f"{code} {p:.2f}" for code, p in candidates[:3]))
        state.unsure = False
        if probability < UNSURE:
            # On a second or less of speech Whisper often hesitates between several languages:
            # stay with the speaker's last language if it is among the contenders, else say so
            # (a partial then waits for more audio, see _progress).
            previous = self._speaker_language
            contenders = [code for code, p in candidates[:5] if p >= 0.05]
            if previous is not None and previous in contenders:
                language = previous
            else:
                state.unsure = True
        state.language = language
        # An unsure guess is never kept: the next detection, on more audio, may do better.
        state.language_kept = keep and not state.unsure
        return language

    def _translations(
        self,
        state: _Open,
        language: str,
        text: str,
        encoded: Encoded | None,
        tail: str,
        final: bool,
        languages: frozenset[str],
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        english: list[str] = []  # Whisper's English, made at most once per caption
        # Under load, a partial's English waits for the final (it costs a Whisper decode).
        speech = final or self._engine.busy.partial_stretch() == 1.0
        for target in sorted(languages):
            route = self._engine.translations.route(language, target)
            if route is None or (route[0].engine is None and not speech):
                continue
            try:
                value = self._run(route, state, text, encoded, tail, final, english)
            except Exception as exc:
                logger.warning("translation %s → %s failed: %s", language, target, exc)
                continue
            if value:
                out[target] = value
        return out

    def _run(
        self,
        route: Route,
        state: _Open,
        text: str,
        encoded: Encoded | None,
        tail: str,
        final: bool,
        english: list[str],
    ) -> str:
        first = route[0]
        if first.engine is None:
            if not english:
                english.append(self._speech_to_english(state, encoded, tail, final))
            value = english[0]
        else:
            value = first.engine.translate(text, first.source, first.target)
        for step in route[1:]:
            if not value:
                break
            assert step.engine is not None
            value = step.engine.translate(value, step.source, step.target)
        return value

    def _speech_to_english(
        self, state: _Open, encoded: Encoded | None, tail: str, final: bool
    ) -> str:
        recognizer = self._engine.recognizer
        o = self._options
        language = state.language or "en"
        parts = []
        for piece in state.pieces:
            if piece.english is None:
                if piece.text:
                    audio = state.utterance.samples(piece.start, piece.end)
                    piece.english = recognizer.decode(
                        recognizer.encode(audio), language, o.final, task="translate"
                    ).text
                else:
                    piece.english = ""
            parts.append(piece.english)
        if encoded is not None and tail:
            decoded = recognizer.decode(
                encoded, language, o.final if final else o.partial, task="translate"
            )
            parts.append(decoded.text if decoded.speech else "")
        return _join(parts)


def _join(parts: list[str]) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())
