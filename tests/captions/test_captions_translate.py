"""Translation: the engine chosen per language pair, Apertium for real, CTranslate2 for real.

No translation model can be downloaded here, so the CTranslate2 test builds a tiny one itself:
SentencePiece models trained on a few sentences, and a one-layer Transformer whose weights are set
so that it always answers one known sentence (its attention and feed-forward layers are zero, so
each decoding step sees only its position, and the output projection maps position t to the t-th
token of the answer, then to </s>). The loading, tokenisation, decoding and detokenisation code is
the real code a converted OPUS-MT or Argos model goes through.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from ctranslate2 import specs
from ctranslate2.specs import model_spec

from townhall.captions.apertium import Apertium, escape, repair_blanks, unescape
from townhall.captions.translate import ModelDirectory, Step, Translations
from townhall.errors import CaptionsError


class Engine:
    def __init__(self, name: str, pairs: set[tuple[str, str]]) -> None:
        self.name = name
        self._pairs = frozenset(pairs)

    def pairs(self) -> frozenset[tuple[str, str]]:
        return self._pairs

    def translate(self, text: str, source: str, target: str) -> str:
        return f"{self.name}:{text}"

    def close(self) -> None:
        pass


def names(route: tuple[Step, ...] | None) -> list[str] | None:
    return None if route is None else [f"{s.source}>{s.target}:{s.engine_name}" for s in route]


def test_each_language_pair_gets_its_engine() -> None:
    apertium = Engine("apertium", {("ru", "uk"), ("uk", "ru")})
    models = Engine("models", {("en", "ru"), ("en", "de"), ("ru", "uk"), ("de", "fr")})
    t = Translations([apertium, models], speech_to_english=True)
    assert names(t.route("ru", "en")) == ["ru>en:whisper"]  # any → English: Whisper
    assert names(t.route("uk", "en")) == ["uk>en:whisper"]
    assert names(t.route("ru", "uk")) == ["ru>uk:apertium"]  # Apertium before the models
    assert names(t.route("uk", "ru")) == ["uk>ru:apertium"]
    assert names(t.route("en", "ru")) == ["en>ru:models"]
    assert names(t.route("de", "fr")) == ["de>fr:models"]
    assert names(t.route("uk", "de")) == ["uk>en:whisper", "en>de:models"]  # through English
    assert t.route("en", "en") is None
    assert t.route("en", "uk") is None  # no engine, no pivot: the listener reads the original
    assert t.route("ru", "xx") is None


def test_without_speech_translation_english_comes_from_a_text_engine_or_not_at_all() -> None:
    models = Engine("models", {("ru", "en"), ("en", "de")})
    t = Translations([models], speech_to_english=False)
    assert names(t.route("ru", "en")) == ["ru>en:models"]
    assert names(t.route("ru", "de")) == ["ru>en:models", "en>de:models"]
    assert t.route("uk", "en") is None


def apertium_or_skip() -> Apertium:
    problem = Apertium.available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return Apertium()


def test_apertium_translates_russian_to_ukrainian_and_back() -> None:
    apertium = apertium_or_skip()
    try:
        uk = apertium.translate("Первый вопрос повестки дня касается бюджета.", "ru", "uk")
        assert uk == "Перший питання повістки дня торкається бюджету."
        ru = apertium.translate("Ми обговорили новий закон про профспілки.", "uk", "ru")
        assert ru.startswith("Мы обговорили") and "закон" in ru
        # unknown words pass through without Apertium's * marks
        assert apertium.translate("Мы обсудили Хабаровск и Zoom.", "ru", "uk") == (
            "Ми обговорили Хабаровск і Zoom."
        )
    finally:
        apertium.close()


def test_apertium_keeps_characters_that_its_stream_format_reserves() -> None:
    apertium = apertium_or_skip()
    try:
        text = "Да [ok] ^x$ / <y> @ \\ {z} * # + |"
        out = apertium.translate(text, "ru", "uk")
        assert out == "Так [ok] ^x$ / <y> @ \\ {z} * # + |"
        assert apertium.translate("  \n ", "ru", "uk") == ""
        assert apertium.translate("Да\0нет", "ru", "uk") == "Так ні"
    finally:
        apertium.close()


def test_apertium_restarts_a_pipeline_that_died() -> None:
    apertium = apertium_or_skip()
    try:
        assert apertium.translate("Да", "ru", "uk") == "Так"
        for direction in apertium._directions.values():
            direction._transfer._process.kill()
        assert apertium.translate("Нет", "ru", "uk") == "Ні"
    finally:
        apertium.close()


def test_apertium_is_fast_enough_to_translate_every_partial() -> None:
    import time

    apertium = apertium_or_skip()
    try:
        apertium.translate("Да", "ru", "uk")  # start the pipeline
        started = time.perf_counter()
        for _ in range(20):
            apertium.translate("Следующая встреча состоится во вторник.", "ru", "uk")
        assert (time.perf_counter() - started) / 20 < 0.05
    finally:
        apertium.close()


def test_the_stream_format_round_trips_and_blanks_are_repaired() -> None:
    assert unescape(escape("a [b] ^c$ @d")) == "a [b] ^c$ @d"
    assert unescape("*домой #пошёл @так") == "домой пошёл так"
    stream = "^Перший<det><ord>$^питання<n><nt>$^.<sent>$"
    assert repair_blanks(stream) == "^Перший<det><ord>$ ^питання<n><nt>$^.<sent>$"


# -- a tiny CTranslate2 model -------------------------------------------------------------------

SOURCE = ["the meeting starts now", "we vote on the budget", "the next meeting is on tuesday",
          "please raise your hand", "thank you all"]
TARGET = ["собрание начинается сейчас", "мы голосуем за бюджет", "следующее собрание во вторник",
          "пожалуйста поднимите руку", "спасибо всем"]
ANSWER = "мы голосуем за бюджет"


def train_spm(sentences: list[str], path: Path) -> sentencepiece.SentencePieceProcessor:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=40,
        model_type="word", hard_vocab_limit=False, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def fill(spec: object, d: int) -> None:
    """Zero every required weight the spec leaves unset (layer norms get gamma = 1)."""
    for name, value in list(vars(spec).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, model_spec.LayerSpec):
            fill(value, d)
        elif isinstance(value, list) and value and isinstance(value[0], model_spec.LayerSpec):
            for layer in value:
                fill(layer, d)
        elif value is None:
            kind = type(spec).__name__
            if kind == "LayerNormSpec":
                setattr(spec, name, np.ones(d, np.float32) if name == "gamma" else
                        np.zeros(d, np.float32))
            elif name == "weight":  # linear layers: attention (fused or not) and feed-forward
                setattr(spec, name, np.zeros(_linear_shape(spec, d), np.float32))


def _linear_shape(spec: object, d: int) -> tuple[int, int]:
    return getattr(spec, "_shape", (d, d))


def build_model(directory: Path) -> None:
    """A Transformer that answers ANSWER whatever it is asked (see the module docstring)."""
    directory.mkdir(parents=True)
    source_sp = train_spm(SOURCE, directory / "source.spm")
    target_sp = train_spm(TARGET, directory / "target.spm")
    source_vocab = [source_sp.id_to_piece(i) for i in range(source_sp.get_piece_size())]
    target_vocab = [target_sp.id_to_piece(i) for i in range(target_sp.get_piece_size())]
    d, positions, ffn = 16, 64, 32
    spec = specs.TransformerSpec.from_config(1, 2)
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = np.zeros((len(source_vocab), d), np.float32)
    decoder.embeddings.weight = np.zeros((len(target_vocab), d), np.float32)
    one_hot = np.eye(positions, d, dtype=np.float32) * 4.0
    encoder.position_encodings.encodings = one_hot
    decoder.position_encodings.encodings = one_hot
    for layer in (*encoder.layer, *decoder.layer):
        layer.self_attention.linear[0].weight = np.zeros((3 * d, d), np.float32)
        layer.self_attention.linear[1].weight = np.zeros((d, d), np.float32)
        layer.ffn.linear_0.weight = np.zeros((ffn, d), np.float32)
        layer.ffn.linear_1.weight = np.zeros((d, ffn), np.float32)
    for layer in decoder.layer:
        layer.attention.linear[0].weight = np.zeros((d, d), np.float32)
        layer.attention.linear[1].weight = np.zeros((2 * d, d), np.float32)
        layer.attention.linear[2].weight = np.zeros((d, d), np.float32)
    fill(spec, d)
    # position t (after layer norm) → the t-th answer token, then </s>
    answer = [*target_sp.encode(ANSWER, out_type=str), "</s>"]
    assert len(set(answer)) == len(answer)
    normed = one_hot[: len(answer)] - one_hot[: len(answer)].mean(axis=1, keepdims=True)
    normed /= normed.std(axis=1, keepdims=True)
    projection = np.zeros((len(target_vocab), d), np.float32)
    for step, token in enumerate(answer):
        projection[target_vocab.index(token)] = 3.0 * normed[step]
    decoder.projection.weight = projection
    spec.register_source_vocabulary(source_vocab)
    spec.register_target_vocabulary(target_vocab)
    spec.validate()
    spec.save(str(directory))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("translation-models")
    build_model(root / "en-ru")
    return root


def test_a_ctranslate2_model_from_the_directory_translates_through_sentencepiece(
    models: Path,
) -> None:
    directory = ModelDirectory(models, threads=1)
    assert directory.pairs() == frozenset({("en", "ru")})
    assert directory.translate("we vote on the budget", "en", "ru") == ANSWER
    # two sentences are translated one by one, in one batch
    assert directory.translate("The meeting starts now. Thank you all!", "en", "ru") == (
        f"{ANSWER} {ANSWER}"
    )
    assert directory.translate("   ", "en", "ru") == ""


def test_an_argos_style_package_with_one_sentencepiece_model_and_a_model_folder_loads(
    models: Path, tmp_path: Path
) -> None:
    package = tmp_path / "models" / "en-de"
    (package / "model").mkdir(parents=True)
    for f in (models / "en-ru").iterdir():
        if f.suffix != ".spm":
            shutil.copy(f, package / "model" / f.name)
    # one shared SentencePiece model: the target one decodes the answer
    shutil.copy(models / "en-ru" / "target.spm", package / "sentencepiece.model")
    (package / "townhall.json").write_text(json.dumps({"beam_size": 1, "source_suffix": ["</s>"]}))
    directory = ModelDirectory(tmp_path / "models")
    assert directory.translate("собрание", "en", "de") == ANSWER


def test_a_broken_translation_models_directory_fails_at_start_with_a_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(CaptionsError, match="no translation models directory"):
        ModelDirectory(tmp_path / "missing")
    (tmp_path / "en-ru").mkdir()
    with pytest.raises(CaptionsError, match=r"no model\.bin"):
        ModelDirectory(tmp_path)
    (tmp_path / "en-ru" / "model.bin").write_bytes(b"not a model")
    with pytest.raises(CaptionsError, match=r"source\.spm and target\.spm"):
        ModelDirectory(tmp_path)
    (tmp_path / "en-ru" / "sentencepiece.model").write_bytes(b"not a model")
    with pytest.raises(CaptionsError, match="cannot load the translation model"):
        ModelDirectory(tmp_path)
    (tmp_path / "en-ru" / "townhall.json").write_text("{not json")
    with pytest.raises(CaptionsError, match="invalid"):
        ModelDirectory(tmp_path)
