"""Bad input for the real engine: sounds that are not speech, endless speech, a speaker who leaves
mid-word, languages without a translation, and models that are missing or broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from captions_support import (
    RATE,
    REPO,
    FakeClock,
    play,
    silence,
    speech,
    synthetic_music,
    texts,
    word_errors,
)

from townhall.captions.pipeline import Engine, SpeakerPipeline
from townhall.errors import CaptionsError

EVERYONE = frozenset({"en", "ru", "uk"})


@pytest.mark.parametrize("kind", ["silence", "noise", "music", "hum and clicks"])
def test_sound_that_is_not_speech_makes_no_caption(engine: Engine, kind: str) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(8 * RATE) / RATE
    clicks = np.zeros(8 * RATE)
    clicks[:: RATE // 3] = 0.9
    audio = {
        "silence": silence(8.0),
        "noise": 0.1 * rng.standard_normal(8 * RATE),
        "music": synthetic_music(8.0),
        "hum and clicks": 0.2 * np.sin(2 * np.pi * 100 * t) + clicks,
    }[kind].astype(np.float32)
    clock = FakeClock()
    pipeline = SpeakerPipeline(engine, clock)
    captions = play(pipeline, clock, audio, EVERYONE)
    captions += pipeline.finish(EVERYONE)
    assert captions == []


def test_samples_out_of_range_or_not_numbers_are_clamped_and_make_no_caption(
    engine: Engine,
) -> None:
    clock = FakeClock()
    pipeline = SpeakerPipeline(engine, clock)
    bad = np.tile(np.array([np.nan, np.inf, -np.inf, 40.0, -40.0, 0.0], np.float32), 8000)
    captions = play(pipeline, clock, np.concatenate([bad, silence(1.0)]), EVERYONE)
    assert captions + pipeline.finish(EVERYONE) == []
    # and the pipeline still works afterwards: a sentence comes out as it does after as much
    # silence (the words depend on where the partials fell, and between CPUs on the engine's
    # kernels: "hear me" came out "here be" without AVX-512)
    sentence = np.concatenate([speech("en-05.wav"), silence(1.0)])
    finals = [c.text for c in play(pipeline, clock, sentence, EVERYONE) if c.final]
    quiet_clock = FakeClock()
    quiet = SpeakerPipeline(engine, quiet_clock)
    play(quiet, quiet_clock, silence(len(bad) / RATE + 1.0), EVERYONE)
    assert finals == [c.text for c in play(quiet, quiet_clock, sentence, EVERYONE) if c.final]
    errors, _ = word_errors(texts()["en-05.wav"]["text"], " ".join(finals))
    assert errors <= 2, finals


def test_a_very_long_utterance_is_cut_into_finals_that_keep_every_sentence(engine: Engine) -> None:
    names = [n for n in texts() if n.startswith("en-")]
    audio = np.concatenate([speech(n) for n in names])  # 24 s without a real pause
    clock = FakeClock()
    pipeline = SpeakerPipeline(engine, clock)
    captions = play(pipeline, clock, np.concatenate([audio, silence(1.0)]), frozenset())
    finals = [c for c in captions if c.final]
    assert len(finals) >= 2
    assert len({c.utterance for c in finals}) == len(finals)
    for c in finals:
        assert c.end - c.start <= engine.options.segmenter.max_utterance + 0.1
    reference = " ".join(texts()[n]["text"] for n in names)
    errors, count = word_errors(reference, " ".join(c.text for c in finals))
    assert errors / count <= 0.2, [c.text for c in finals]


def test_a_speaker_who_leaves_mid_word_gets_a_final_with_what_was_said(engine: Engine) -> None:
    audio = speech("en-02.wav")  # "The first item on the agenda is the budget for next year."
    clock = FakeClock()
    pipeline = SpeakerPipeline(engine, clock)
    play(pipeline, clock, audio[: int(len(audio) * 0.55)], EVERYONE)
    finals = pipeline.finish(EVERYONE)
    assert [c.final for c in finals] == [True]
    said = finals[0].text.lower()
    assert "first item" in said and "next year" not in said
    assert pipeline.finish(EVERYONE) == []


def test_a_language_without_a_translation_engine_is_left_out_and_the_others_arrive(
    engine: Engine,
) -> None:
    clock = FakeClock()
    pipeline = SpeakerPipeline(engine, clock)
    wanted = frozenset({"en", "uk", "xx", "de"})
    captions = play(pipeline, clock, np.concatenate([speech("ru-03.wav"), silence(1.0)]), wanted)
    (final,) = [c for c in captions if c.final]
    assert final.language == "ru"
    assert set(final.translations) == {"en", "uk"}
    assert "decision" in final.translations["en"].lower()
    assert final.translations["uk"].startswith("Нам потрібно")


def test_a_missing_model_path_fails_at_load_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaptionsError, match="no Whisper model directory at"):
        Engine.load(str(tmp_path / "nowhere"))


def test_a_directory_that_is_not_a_whisper_model_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(CaptionsError, match=r"missing model\.bin, tokenizer\.json"):
        Engine.load(str(tmp_path))
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CaptionsError, match="cannot load the Whisper model"):
        Engine.load(str(tmp_path))


def test_a_model_name_offline_fails_at_load_with_a_clear_error(tmp_path: Path) -> None:
    code = (
        "from townhall.captions.pipeline import Engine\n"
        "from townhall.errors import CaptionsError\n"
        "try:\n    Engine.load('base')\n"
        "except CaptionsError as e:\n    print('CaptionsError:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "CaptionsError: the Whisper model 'base' is not downloaded" in out.stdout, out.stderr
    assert "--asr-model" in out.stdout
