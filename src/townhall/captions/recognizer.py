"""Speech recognition with faster-whisper's CTranslate2 Whisper model, on the CPU in int8.

The model is used at the level of CTranslate2 (encode, detect the language, generate) rather than
through ``WhisperModel.transcribe``, because a caption needs less than a 30 s window:

- **Short encoder context.** Whisper's encoder normally sees 30 s (3,000 feature frames), which
  costs about 0.5 s on two cores whatever the audio. The encoder here sees the audio plus at least
  ``pad`` seconds of silence, and never less than ``min_context`` seconds: on the test speech, a
  10 s context gives the same word error rate as 30 s at a fifth of the cost.
- **Repetition.** With a short context Whisper tends to repeat its sentence; decoding uses a
  repetition penalty, a length limit proportional to the audio, and cuts a block of tokens that
  repeats right after itself.
- **Hallucination.** Audio without speech should never reach the model (the VAD gates it); as a
  second guard a result is dropped when Whisper's no-speech probability is high and its average
  log-probability low (Whisper's own rule), or when it is a known silence phrase with a high
  no-speech probability.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from townhall.errors import CaptionsError
from townhall.languages import is_language

logger = logging.getLogger(__name__)

RATE = 16000
HOP = 160  # samples per feature frame
MAX_SECONDS = 29.0  # the encoder's window is 30 s; leave room for the padding

# Whisper's language tokens that are not ISO 639-1 codes: Javanese is "jw" to Whisper, and
# Cantonese ("yue") is reported as Chinese. Hawaiian ("haw") has no ISO 639-1 code: it is never
# reported (the next most probable language is).
_ISO_639_1 = {"jw": "jv", "yue": "zh"}
_FROM_ISO = {"jv": "jw"}

# Phrases Whisper produces from silence or noise (lower case, without punctuation).
_SILENCE_PHRASES = frozenset(
    {
        "thank you",
        "thanks for watching",
        "thank you for watching",
        "you",
        "bye",
        "продолжение следует",
        "субтитры сделал dimatorzok",
        "редактор субтитров а семкин корректор а егорова",
    }
)

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 1
    repetition_penalty: float = 1.1
    tokens_per_second: float = 10.0
    extra_tokens: int = 12


@dataclass(frozen=True)
class RecognizerConfig:
    pad: float = 1.0
    min_context: float = 10.0
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    prompt_tokens: int = 96


@dataclass(frozen=True)
class Encoded:
    """The encoder's output for some audio (opaque outside this module)."""

    output: Any
    seconds: float


@dataclass(frozen=True)
class Decoded:
    text: str
    no_speech_probability: float
    average_logprob: float
    speech: bool  # False: the guard decided this was no speech


class Recognizer:
    """One Whisper model, shared by every speaker (CTranslate2 serialises concurrent calls)."""

    def __init__(self, model: Any, config: RecognizerConfig | None = None) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.config = config or RecognizerConfig()
        self._model = model
        self._tokenizer_class = Tokenizer
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self.multilingual: bool = bool(model.model.is_multilingual)

    @classmethod
    def load(cls, asr_model: str, threads: int = 0) -> Recognizer:
        """Load a model from a directory, or download one by name (see ``resolve_model``)."""
        from faster_whisper import WhisperModel

        path = resolve_model(asr_model)
        try:
            model = WhisperModel(
                str(path), device="cpu", compute_type="int8", cpu_threads=threads
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise CaptionsError(
                f"cannot load the Whisper model at {path}: {exc} "
                "(expected a CTranslate2 Whisper model directory)"
            ) from exc
        return cls(model)

    @property
    def languages(self) -> tuple[str, ...]:
        """The ISO 639-1 codes this model can recognise."""
        if not self.multilingual:
            return ("en",)
        codes = (_ISO_639_1.get(code, code) for code in self._model.supported_languages)
        return tuple(dict.fromkeys(code for code in codes if is_language(code)))

    def encode(self, audio: Samples) -> Encoded:
        import ctranslate2

        audio = audio[-int(MAX_SECONDS * RATE) :]
        c = self.config
        padded = np.zeros(len(audio) + int(c.pad * RATE), dtype=np.float32)
        padded[: len(audio)] = audio
        features = self._model.feature_extractor(padded)
        # The rest of the context is silence: its frames all hold the floor value (the log-mel
        # of zeros, clipped at the maximum - 8), which the padding above already reached.
        wanted = int(c.min_context * RATE) // HOP
        if features.shape[-1] < wanted:
            floor = np.full(
                (features.shape[0], wanted - features.shape[-1]), features.min(), np.float32
            )
            features = np.concatenate([features, floor], axis=1)
        frames = min(features.shape[-1] - features.shape[-1] % 2, 3000)
        batch = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        output = self._model.model.encode(
            ctranslate2.StorageView.from_array(batch), to_cpu=False
        )
        return Encoded(output, len(audio) / RATE)

    def detect_language(
        self, encoded: Encoded, allowed: frozenset[str] | None = None
    ) -> list[tuple[str, float]]:
        """Language candidates, most probable first (restricted to ``allowed`` when given)."""
        if not self.multilingual:
            return [("en", 1.0)]
        results = self._model.model.detect_language(encoded.output)[0]
        candidates: list[tuple[str, float]] = []
        seen: set[str] = set()
        for token, probability in results:
            code = _ISO_639_1.get(token[2:-2], token[2:-2])
            if is_language(code) and code not in seen:
                seen.add(code)
                candidates.append((code, probability))
        if allowed:
            restricted = [(code, p) for code, p in candidates if code in allowed]
            if restricted:
                return restricted
        return candidates

    def decode(
        self,
        encoded: Encoded,
        language: str,
        options: DecodeOptions,
        task: str = "transcribe",
        prompt: str = "",
    ) -> Decoded:
        """Transcribe (or, with ``task="translate"``, translate to English) encoded audio."""
        code = _FROM_ISO.get(language, language) if self.multilingual else None
        tokenizer = self._tokenizers.get((task, code))
        if tokenizer is None:
            tokenizer = self._tokenizers[(task, code)] = self._tokenizer_class(
                self._model.hf_tokenizer, self.multilingual, task=task, language=code
            )
        sequence = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        if prompt:
            previous = tokenizer.encode(" " + prompt.strip())[-self.config.prompt_tokens :]
            sequence = [tokenizer.sot_prev, *previous, *sequence]
        # The limit counts the prompt too; Whisper's text context is 448 tokens.
        new = int(options.extra_tokens + options.tokens_per_second * encoded.seconds)
        limit = min(len(sequence) + new, 448)
        result = self._model.model.generate(
            encoded.output,
            [sequence],
            beam_size=options.beam_size,
            repetition_penalty=options.repetition_penalty,
            max_length=limit,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        tokens = cut_repetition(tokens)
        text = tokenizer.decode(tokens).strip()
        no_speech = float(result.no_speech_prob)
        logprob = float(result.scores[0]) if result.scores else 0.0
        return Decoded(text, no_speech, logprob, self._is_speech(text, no_speech, logprob))

    def _is_speech(self, text: str, no_speech: float, logprob: float) -> bool:
        c = self.config
        if not text:
            return False
        if no_speech > c.no_speech_threshold and logprob < c.logprob_threshold:
            return False
        plain = "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).strip()
        return not (plain in _SILENCE_PHRASES and no_speech > c.no_speech_threshold / 2)


def cut_repetition(tokens: list[int], shortest: int = 4) -> list[int]:
    """Cut a token sequence where a block of ``shortest`` or more tokens repeats right after itself.

    A short encoder context makes Whisper loop ("Good morning. Good morning. Good morning.");
    real speech almost never says the same four tokens twice in a row.
    """
    count = len(tokens)
    for start in range(count):
        for size in range(shortest, (count - start) // 2 + 1):
            if tokens[start : start + size] == tokens[start + size : start + 2 * size]:
                return tokens[: start + size]
    return tokens


def resolve_model(asr_model: str) -> Path:
    """A model directory from ``--asr-model``: an existing path, or a model name to download.

    A name is one of faster-whisper's model sizes (``tiny``, ``base``, ``small``, ``large-v3``,
    ...); it is downloaded from the Hugging Face Hub on first use, with progress shown, into the
    Hub's cache. Anything else is a path, which must be a CTranslate2 Whisper model directory.
    """
    from faster_whisper.utils import available_models

    path = Path(asr_model).expanduser()
    if path.exists() or asr_model not in available_models():
        if not path.is_dir():
            raise CaptionsError(
                f"no Whisper model directory at {asr_model!r} (give --asr-model a path to a "
                f"CTranslate2 Whisper model, or one of: {', '.join(available_models())})"
            )
        missing = [name for name in ("model.bin", "tokenizer.json") if not (path / name).is_file()]
        if missing:
            raise CaptionsError(
                f"{path} is not a CTranslate2 Whisper model directory: missing "
                + ", ".join(missing)
            )
        return path
    return download_model(asr_model)


def download_model(name: str) -> Path:
    """Download a Whisper model by name into the Hub cache, showing progress on stderr."""
    import faster_whisper.utils
    import huggingface_hub

    repo = getattr(faster_whisper.utils, "_MODELS", {}).get(name, f"Systran/faster-whisper-{name}")
    patterns = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
                "vocabulary.*"]
    try:
        cached = huggingface_hub.snapshot_download(
            repo, allow_patterns=patterns, local_files_only=True
        )
        return Path(cached)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise CaptionsError(
            f"the Whisper model {name!r} is not downloaded and this machine is offline "
            "(HF_HUB_OFFLINE is set): give --asr-model a path to a CTranslate2 Whisper model"
        )
    logger.warning("downloading the Whisper model %r from %s (first use only)", name, repo)
    try:
        downloaded = huggingface_hub.snapshot_download(repo, allow_patterns=patterns)
    except Exception as exc:
        raise CaptionsError(
            f"cannot download the Whisper model {name!r} ({type(exc).__name__}: {exc}); "
            "offline, give --asr-model a path to a CTranslate2 Whisper model directory"
        ) from exc
    logger.warning("Whisper model %r is at %s", name, downloaded)
    return Path(downloaded)
