"""Captions of a real browser's microphone, read in another page's live region.

Chromium's fake microphone plays a speech fixture (``--use-file-for-fake-audio-capture``, looped,
with silence around the sentence); the page publishes it like any microphone; the captions worker
(real engine, in this process) captions it; a listener's page shows the final caption under the
speaker's name in its ARIA live region.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support import RunningServer, read_wav, word_error_rate
from townhall.captions.pipeline import Engine, SpeakerPipeline
from townhall.captions.worker import Worker

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SPEECH = REPO / "tests" / "fixtures" / "speech"
CLIP = "en-02.wav"
WER_LIMIT = 0.35


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_extra_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The fake microphone says the clip every 8 s: 1.5 s of silence, the clip, then silence."""
    samples, rate = read_wav(SPEECH / CLIP)
    quiet = np.zeros(int(1.5 * rate), np.int16)
    padded = np.concatenate([quiet, samples, quiet, quiet, quiet])
    path = tmp_path_factory.mktemp("speech") / "microphone.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(padded.tobytes())
    # Both pages run in one browser: muted, the listener's page plays nothing that the speaker
    # page's echo canceller may take for an echo of its microphone (people on two machines
    # have no such path).
    return [f"--use-file-for-fake-audio-capture={path}", "--mute-audio"]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    model = os.environ.get("TOWNHALL_ASR_MODEL") or str(
        REPO.parent / "shared" / "models" / "whisper-base")
    _need(Path(model).is_dir(), f"no Whisper model at {model}")
    loaded = Engine.load(model)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture
async def worker(server: RunningServer, engine: Engine) -> AsyncIterator[Worker]:
    running = Worker(server.base_url, server.token("*", "caption"), lambda: SpeakerPipeline(engine))
    task = asyncio.ensure_future(running.run())
    try:
        yield running
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def join(page: Any, url: str, name: str) -> str:
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#join")
    await page.wait_for_function(
        "window.townhall && window.townhall.status === 'connected' && window.townhall.self"
    )
    return str(await page.evaluate("window.townhall.self.id"))


FINALS = """(speaker) => [...document.querySelectorAll(
    `#caption-log .caption-line[data-participant="${speaker}"][data-final="true"]`)].map(
    (line) => ({name: line.querySelector('.caption-name').textContent,
                text: line.querySelector('.caption-text').textContent,
                lang: line.querySelector('.caption-text').getAttribute('lang')}))"""


async def test_a_pages_microphone_is_captioned_in_another_pages_live_region(
    server: RunningServer, worker: Worker, new_page: Any,
) -> None:
    room = await server.create_room("spoken")
    await server.running.services.store.set_captions(room, True)
    speaker, listener = await new_page(), await new_page()
    speaker_id = await join(speaker, await server.invite(room, "speaker"), "Olena")
    await join(listener, await server.invite(room, "listener"), "Taras")
    expected = json.loads((SPEECH / "texts.json").read_text("utf-8"))[CLIP]["text"]

    deadline = time.monotonic() + 45  # the clip comes round every 8 s
    finals: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        finals = await listener.evaluate(FINALS, speaker_id)
        if any(word_error_rate(expected, f["text"]) < WER_LIMIT for f in finals):
            break
        await asyncio.sleep(0.5)
    good = [f for f in finals if word_error_rate(expected, f["text"]) < WER_LIMIT]
    assert good, f"no caption close to {expected!r} in the listener's page: {finals}"
    assert good[0]["name"] == "Olena" and good[0]["lang"] == "en"
    assert await listener.get_attribute("#caption-log", "aria-live") == "polite"
    assert good[0]["text"] in (await listener.text_content("#caption-log") or "")
    assert room in worker.sessions
