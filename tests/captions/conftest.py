"""Fixtures of the captions tests: one real engine (Whisper base, Silero VAD, Apertium) per run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from captions_support import asr_model

from townhall.captions.pipeline import Engine


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    loaded = Engine.load(asr_model(), threads=2)
    try:
        yield loaded
    finally:
        loaded.close()
