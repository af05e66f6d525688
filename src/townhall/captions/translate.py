"""Translation of captions: one small interface, an engine chosen per language pair.

    TextTranslator            text in one language → text in another
    ├── Apertium              Russian ↔ Ukrainian (Debian's apertium-rus-ukr), see ``apertium.py``
    └── ModelDirectory        CTranslate2 translation models + SentencePiece, one per pair, from
                              a configured directory (Argos Translate, OPUS-MT or NLLB converted)

Any language → English does not go through text at all: it is Whisper's own translate task on the
utterance's audio (the recognizer's job; a route step with ``engine=None`` stands for it).

``Translations.route(source, target)`` picks the engines for a pair, in this order:

1. the same language: nothing to do;
2. → English: Whisper's translate task on the audio;
3. a text engine that has the pair (Apertium first, then the model directory);
4. through English: speech → English (rule 2), then a text engine for English → target;
5. otherwise no route: that listener reads the original.

Layout of the model directory (``--translation-models DIR``)::

    DIR/
      en-ru/                     one directory per pair, named <source>-<target> (ISO 639-1)
        model.bin, config.json,  a CTranslate2 translation model (converted by ct2-*-converter)
        shared_vocabulary.*      (or source_vocabulary.* and target_vocabulary.*)
        source.spm, target.spm   SentencePiece models for each side, or one sentencepiece.model
        townhall.json            optional: {"source_prefix": [...], "source_suffix": [...],
                                            "target_prefix": [...], "beam_size": 2}
      de-en/
        model/model.bin ...      an unpacked Argos Translate package works as is (model/ and
        sentencepiece.model      sentencepiece.model)

OPUS-MT (Marian) models need ``{"source_suffix": ["</s>"]}``; NLLB models need the language tokens,
e.g. ``{"source_prefix": ["eng_Latn"], "source_suffix": ["</s>"], "target_prefix": ["rus_Cyrl"]}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from townhall.errors import CaptionsError

logger = logging.getLogger(__name__)

_PAIR = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


class TextTranslator(Protocol):
    """A translation engine for text; safe to call from several threads."""

    name: str

    def pairs(self) -> frozenset[tuple[str, str]]:
        """The (source, target) language pairs this engine translates, ISO 639-1 codes."""
        ...

    def translate(self, text: str, source: str, target: str) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Step:
    source: str
    target: str
    engine: TextTranslator | None  # None: Whisper's translate task on the audio (to English)

    @property
    def engine_name(self) -> str:
        return "whisper" if self.engine is None else self.engine.name


Route = tuple[Step, ...]


class Translations:
    """Chooses the engines for each language pair (see the module docstring for the rules)."""

    def __init__(self, engines: Sequence[TextTranslator], speech_to_english: bool) -> None:
        self.engines = tuple(engines)
        self.speech_to_english = speech_to_english
        self._routes: dict[tuple[str, str], Route | None] = {}

    def route(self, source: str, target: str) -> Route | None:
        key = (source, target)
        if key not in self._routes:
            self._routes[key] = self._choose(source, target)
        return self._routes[key]

    def _choose(self, source: str, target: str) -> Route | None:
        if source == target:
            return None
        if target == "en" and self.speech_to_english:
            return (Step(source, "en", None),)
        direct = self._text_engine(source, target)
        if direct is not None:
            return (Step(source, target, direct),)
        if "en" not in (source, target):
            to_english = self._choose(source, "en")
            onwards = self._text_engine("en", target)
            if to_english is not None and len(to_english) == 1 and onwards is not None:
                return (to_english[0], Step("en", target, onwards))
        return None

    def _text_engine(self, source: str, target: str) -> TextTranslator | None:
        for engine in self.engines:
            if (source, target) in engine.pairs():
                return engine
        return None

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


@dataclass(frozen=True)
class _ModelOptions:
    source_prefix: tuple[str, ...] = ()
    source_suffix: tuple[str, ...] = ()
    target_prefix: tuple[str, ...] = ()
    beam_size: int = 2


class _PairModel:
    def __init__(self, directory: Path, threads: int) -> None:
        import ctranslate2
        import sentencepiece

        model = directory / "model" if (directory / "model" / "model.bin").is_file() else directory
        if not (model / "model.bin").is_file():
            raise CaptionsError(f"no model.bin in translation model directory {directory}")
        shared = directory / "sentencepiece.model"
        source_spm = directory / "source.spm"
        target_spm = directory / "target.spm"
        if not (source_spm.is_file() and target_spm.is_file()):
            if not shared.is_file():
                raise CaptionsError(
                    f"{directory} needs source.spm and target.spm (or one sentencepiece.model)"
                )
            source_spm = target_spm = shared
        self.options = _read_options(directory / "townhall.json")
        try:
            self.source: Any = sentencepiece.SentencePieceProcessor(model_file=str(source_spm))
            self.target: Any = sentencepiece.SentencePieceProcessor(model_file=str(target_spm))
            self.translator: Any = ctranslate2.Translator(
                str(model), device="cpu", compute_type="int8", inter_threads=1,
                intra_threads=threads,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise CaptionsError(f"cannot load the translation model in {directory}: {exc}") from exc

    def translate(self, text: str) -> str:
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
        if not sentences:
            return ""
        o = self.options
        batch = [
            [*o.source_prefix, *self.source.encode(sentence, out_type=str), *o.source_suffix]
            for sentence in sentences
        ]
        prefix = [list(o.target_prefix)] * len(batch) if o.target_prefix else None
        results = self.translator.translate_batch(
            batch, target_prefix=prefix, beam_size=o.beam_size,
            max_decoding_length=min(512, 16 + 3 * max(len(tokens) for tokens in batch)),
        )
        special = set(o.target_prefix) | {"<s>", "</s>", "<unk>"}
        out = []
        for result in results:
            tokens = [t for t in result.hypotheses[0] if t not in special]
            out.append(self.target.decode_pieces(tokens).strip())
        return " ".join(s for s in out if s)


def _read_options(path: Path) -> _ModelOptions:
    if not path.is_file():
        return _ModelOptions()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _ModelOptions(
            source_prefix=tuple(str(t) for t in data.get("source_prefix", ())),
            source_suffix=tuple(str(t) for t in data.get("source_suffix", ())),
            target_prefix=tuple(str(t) for t in data.get("target_prefix", ())),
            beam_size=int(data.get("beam_size", 2)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise CaptionsError(f"invalid {path}: {exc}") from exc


class ModelDirectory:
    """CTranslate2 translation models found in a directory, loaded at start (errors come early)."""

    name = "ctranslate2"

    def __init__(self, root: Path, threads: int = 0) -> None:
        if not root.is_dir():
            raise CaptionsError(f"no translation models directory at {root}")
        self._models: dict[tuple[str, str], _PairModel] = {}
        for directory in sorted(root.iterdir()):
            match = _PAIR.match(directory.name)
            if not directory.is_dir() or match is None:
                continue
            self._models[(match[1], match[2])] = _PairModel(directory, threads)
        logger.info(
            "translation models: %s", ", ".join(f"{s}-{t}" for s, t in self._models) or "none"
        )

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._models)

    def translate(self, text: str, source: str, target: str) -> str:
        return self._models[(source, target)].translate(text)

    def close(self) -> None:
        self._models.clear()

