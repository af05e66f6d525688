"""Captions end to end: real server, real aiortc participants, the real worker and engine.

A speaker plays a speech fixture into a meeting in real time; the captions worker (faster-whisper
with ``../shared/models/whisper-base``) captions it; listeners receive the partials and the final
``caption``, in the original language or the one they chose; the final is in the transcript.
The engine is loaded once for the module and shared by the in-process workers the tests start;
one test runs the worker as its own process (``python -m townhall captions``) and kills it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support import (
    Attendee,
    RunningServer,
    SpeechTrack,
    Spoken,
    make_config,
    until,
    word_error_rate,
    words,
)
from townhall.captions.pipeline import Engine, SpeakerPipeline
from townhall.captions.worker import Worker
from townhall.server import app as server_app

REPO = Path(__file__).resolve().parent.parent
SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech"
#: Word error rate a final caption of a clean fixture must stay under.
WER_LIMIT = 0.35


def asr_model() -> str:
    return os.environ.get("TOWNHALL_ASR_MODEL") or str(
        REPO.parent / "shared" / "models" / "whisper-base")


def texts() -> dict[str, dict[str, str]]:
    loaded: dict[str, dict[str, str]] = json.loads((SPEECH / "texts.json").read_text("utf-8"))
    return loaded


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    _need(Path(asr_model()).is_dir(), f"no Whisper model at {asr_model()}")
    _need((SPEECH / "texts.json").exists(), f"no speech fixtures in {SPEECH}")
    loaded = Engine.load(asr_model())
    try:
        yield loaded
    finally:
        loaded.close()


class Meeting:
    """A room with captions on, a speaker with a :class:`SpeechTrack`, and listeners."""

    def __init__(self, server: RunningServer, room: str) -> None:
        self.server = server
        self.room = room
        self.voice = SpeechTrack()
        self.speaker = Attendee(server.ws_url, server.token(room, "speaker"), "Olena")
        self.listeners: list[Attendee] = []

    async def start(self, listeners: int = 1) -> None:
        await self.speaker.join()
        await self.speaker.publish(video=False, audio_track=self.voice)
        for n in range(listeners):
            listener = Attendee(self.server.ws_url, self.server.token(self.room, "listener"),
                                f"listener {n}")
            await listener.join()
            self.listeners.append(listener)

    async def close(self) -> None:
        for attendee in [self.speaker, *self.listeners]:
            await attendee.close()


async def captioned_room(server: RunningServer, name: str) -> str:
    room = await server.create_room(name)
    await server.running.services.store.set_captions(room, True)
    return room


#: Packets (20 ms each) the server must have sent the worker before a test speaks: a
#: negotiated consumer alone left the worker's connection still coming up under load, and the
#: start of the speech went missing.
FLOWING = 25


def worker_hears(server: server_app.Running, room: str, speaker: str) -> Callable[[], bool]:
    """The captions worker in ``room`` receives ``speaker``'s microphone (server side): the
    server has sent it ``FLOWING`` packets of it."""

    def check() -> bool:
        live = server.services.registry.find(room)
        if live is None:
            return False
        for participant in live.participants.values():
            if participant.role == "caption" and participant.connected:
                for consumer in participant.consumers.values():
                    if consumer.producer.owner == speaker and consumer.producer.kind == "audio" \
                            and consumer.slot.payload_type is not None \
                            and consumer.packets >= FLOWING:
                        return True
        return False

    return check


class InProcess:
    """A worker running as a task of the test's loop, on the module's engine."""

    def __init__(self, base_url: str, token: str, engine: Engine) -> None:
        self.worker = Worker(base_url, token, lambda: SpeakerPipeline(engine))
        self.task = asyncio.ensure_future(self.worker.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def worker(server: RunningServer, engine: Engine) -> AsyncIterator[Worker]:
    running = InProcess(server.base_url, server.token("*", "caption"), engine)
    try:
        yield running.worker
    finally:
        await running.stop()


def finals(listener: Attendee, speaker: str | None = None) -> list[dict[str, Any]]:
    return [m for m in listener.messages if m["type"] == "caption" and m["final"]
            and (speaker is None or m["participant"] == speaker)]


async def transcript(server: RunningServer, room: str, meeting: str,
                     form: str = "json") -> Any:
    """The meeting's transcript through the HTTP API (a host of the room may read it)."""
    headers = {"Authorization": f"Bearer {server.token(room, 'host')}"}
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.base_url}/api/meetings/{meeting}/transcript", params={"format": form},
        headers=headers,
    ) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["captions"] if form == "json" else await response.text()


async def speak(meeting: Meeting, clip: str, server: server_app.Running) -> Spoken:
    await until(worker_hears(server, meeting.room, meeting.speaker.id), 15,
                "the worker receives the speaker")
    await asyncio.sleep(0.5)  # DTLS and the first packets
    return meeting.voice.say(SPEECH / clip)


# -- the tests ---------------------------------------------------------------------------------


async def test_a_listener_reads_partials_then_the_final_words_under_the_speakers_name(
    server: RunningServer, worker: Worker,
) -> None:
    room = await captioned_room(server, "english")
    meeting = Meeting(server, room)
    try:
        await meeting.start()
        listener = meeting.listeners[0]
        spoken = await speak(meeting, "en-02.wav", server.running)
        final = await listener.wait_for(
            "caption", timeout=30, where=lambda m: m["final"] and m["text"].strip())
        partials = [m for m in listener.messages if m["type"] == "caption" and not m["final"]]
        expected = texts()["en-02.wav"]["text"]
        assert final["participant"] == meeting.speaker.id
        assert final["name"] == "Olena"
        assert final["language"] == "en" and final["translated"] is None
        assert word_error_rate(expected, final["text"]) < WER_LIMIT, final["text"]
        assert partials, "no partial caption while the speaker spoke"
        assert partials[-1]["utterance"] == final["utterance"]
        rows = await transcript(server, room, listener.joined["meeting"]["id"])
        assert [r["text"] for r in rows] == [final["text"]]
        assert (rows[0]["participant"], rows[0]["name"]) == (meeting.speaker.id, "Olena")
        assert rows[0]["language"] == "en" and rows[0]["utterance"] == final["utterance"]
        assert spoken.started is not None
        assert rows[0]["start"] == pytest.approx(spoken.started, abs=1.0)
        assert rows[0]["end"] - rows[0]["start"] == pytest.approx(spoken.duration, abs=1.0)
        vtt = await transcript(server, room, listener.joined["meeting"]["id"], "vtt")
        assert vtt.startswith("WEBVTT") and f"<v Olena>{final['text']}" in vtt
    finally:
        await meeting.close()


async def test_russian_speech_reaches_listeners_in_russian_english_and_ukrainian(
    server: RunningServer, worker: Worker,
) -> None:
    room = await captioned_room(server, "bridge")
    meeting = Meeting(server, room)
    try:
        await meeting.start(listeners=3)
        original, english, ukrainian = meeting.listeners
        await english.send({"type": "caption-language", "language": "en"})
        await ukrainian.send({"type": "caption-language", "language": "uk"})
        await until(lambda: room in worker.sessions
                    and worker.sessions[room].languages == {"en", "uk"}, 10,
                    "the worker knows the languages wanted")
        await speak(meeting, "ru-02.wav", server.running)
        said = [await listener.wait_for("caption", timeout=40,
                                        where=lambda m: m["final"] and m["text"].strip())
                for listener in meeting.listeners]
        assert all(m["participant"] == meeting.speaker.id for m in said)
        assert all(m["utterance"] == said[0]["utterance"] for m in said)
        assert {m["original"] for m in said} == {said[0]["text"]}
        assert [(m["language"], m["translated"]) for m in said] == [
            ("ru", None), ("ru", "en"), ("ru", "uk")]
        russian, in_english, in_ukrainian = (m["text"] for m in said)
        assert word_error_rate(texts()["ru-02.wav"]["text"], russian) < WER_LIMIT, russian
        # Whisper's translation, and Apertium's Russian → Ukrainian.
        assert {"first", "budget"} <= set(words(in_english)), in_english
        # "вопрос" is "питання" in Ukrainian, "бюджета" is "бюджету".
        assert {"питання", "бюджету"} <= set(words(in_ukrainian)), in_ukrainian
        [row] = await transcript(server, room, original.joined["meeting"]["id"])
        assert row["translations"] == {"en": in_english, "uk": in_ukrainian}
    finally:
        await meeting.close()


async def test_a_speaker_who_leaves_mid_word_still_gets_a_final_for_what_they_said(
    server: RunningServer, worker: Worker,
) -> None:
    room = await captioned_room(server, "walkout")
    meeting = Meeting(server, room)
    try:
        await meeting.start()
        listener = meeting.listeners[0]
        speaker = meeting.speaker.id
        spoken = await speak(meeting, "en-08.wav", server.running)
        await until(lambda: spoken.started is not None, 5, "the sentence starts")
        await asyncio.sleep(1.6)
        await meeting.speaker.close()  # "Let us take a short|" of a 3.5 s sentence
        assert spoken.ended is None
        final = await listener.wait_for("caption", timeout=20, where=lambda m: m["final"])
        assert final["participant"] == speaker and final["name"] == "Olena"
        heard = final["text"].lower()
        assert "let us" in heard or "let's" in heard, heard
        assert "ten minutes" not in heard  # it was never said
        [row] = await transcript(server, room, listener.joined["meeting"]["id"])
        assert row["text"] == final["text"]
    finally:
        await meeting.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_captions_go_on_after_the_server_restarts_mid_meeting(
    tmp_path: Path, engine: Engine,
) -> None:
    config = make_config(tmp_path / "data").replace(http_port=free_port())
    running = await server_app.start(config)
    server = RunningServer(running)
    room = await captioned_room(server, "restart")
    worker = InProcess(server.base_url, server.token("*", "caption"), engine)
    meeting = Meeting(server, room)
    try:
        await meeting.start()
        meeting_id = meeting.listeners[0].joined["meeting"]["id"]
        await speak(meeting, "en-02.wav", running)
        await meeting.listeners[0].wait_for("caption", timeout=30, where=lambda m: m["final"])
        await running.stop()
        await meeting.close()

        running = await server_app.start(config)
        server = RunningServer(running)
        meeting = Meeting(server, room)
        await meeting.start()
        assert meeting.listeners[0].joined["meeting"]["id"] == meeting_id
        await speak(meeting, "en-07.wav", running)
        final = await meeting.listeners[0].wait_for(
            "caption", timeout=40, where=lambda m: m["final"]
            and m["participant"] == meeting.speaker.id)
        assert word_error_rate(texts()["en-07.wav"]["text"], final["text"]) < WER_LIMIT
        rows = await transcript(server, room, meeting_id)
        assert len(rows) == 2
        assert word_error_rate(texts()["en-02.wav"]["text"], rows[0]["text"]) < WER_LIMIT
        assert rows[1]["text"] == final["text"]
    finally:
        await worker.stop()
        await meeting.close()
        await running.stop()


async def test_a_killed_worker_process_is_replaced_and_captions_go_on(
    server: RunningServer, engine: Engine, tmp_path: Path,
) -> None:
    room = await captioned_room(server, "replaced")
    meeting = Meeting(server, room)
    log = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "townhall", "captions", "--server", server.base_url,
         "--token", server.token("*", "caption"), "--asr-model", asr_model()],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    replacement: InProcess | None = None
    try:
        await meeting.start()
        listener = meeting.listeners[0]
        await speak(meeting, "en-01.wav", server.running)
        first = await listener.wait_for("caption", timeout=60, where=lambda m: m["final"])
        assert word_error_rate(texts()["en-01.wav"]["text"], first["text"]) < WER_LIMIT
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        replacement = InProcess(server.base_url, server.token("*", "caption"), engine)
        await until(lambda: room in replacement.worker.sessions
                    and replacement.worker.sessions[room].joined.is_set(), 15,
                    "the new worker joins")
        # The killed worker's place is given up after the reconnect grace; the new one hears.
        await speak(meeting, "en-03.wav", server.running)
        second = await listener.wait_for(
            "caption", timeout=40,
            where=lambda m: m["final"] and m["utterance"] != first["utterance"])
        assert word_error_rate(texts()["en-03.wav"]["text"], second["text"]) < WER_LIMIT
        assert second["participant"] == meeting.speaker.id
        text = log.read_text(errors="replace")
        assert first["text"] not in text and "token" not in text.lower(), text[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if replacement is not None:
            await replacement.stop()
        await meeting.close()
