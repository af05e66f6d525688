"""The captions worker's bookkeeping: turns, the outbox, frame times, and its media path.

These tests use a small stand-in pipeline (it counts samples and says how many it heard) so that
they check the worker, not speech recognition; ``test_captions_end_to_end.py`` runs the real
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from av import AudioFrame

from support import Attendee, RunningServer, make_config
from townhall.auth import tokens
from townhall.captions.outbox import CaptionOutbox
from townhall.captions.pipeline import Caption
from townhall.captions.scheduler import Scheduler, Speaker
from townhall.captions.session import FrameClock, RoomSession, backoff
from townhall.captions.worker import Worker, parse_languages, socket_urls
from townhall.errors import BadRequest, Unauthorized
from townhall.server import app as server_app


class Hold:
    """Once armed, finals wait (on the recognition thread) until released."""

    def __init__(self) -> None:
        self.armed = False
        self.released = threading.Event()


class CountingPipeline:
    """Says how many samples it was fed: a partial per poll with news, a final on finish."""

    def __init__(self, turn_time: float = 0.0, hold: Hold | None = None) -> None:
        self.turn_time = turn_time
        #: Finals wait while it holds them (see :class:`Hold`).
        self.hold = hold
        self.samples = 0
        self.feeds: list[float] = []
        self.finishes = 0
        self.utterance = uuid.uuid4().hex[:8]
        self.start: float | None = None
        self.reported = 0
        self.threads: set[str] = set()
        self._busy = threading.Lock()
        self.overlaps = 0

    def feed(self, samples: npt.NDArray[np.float32], at: float) -> None:
        assert samples.dtype == np.float32
        self.samples += len(samples)
        self.feeds.append(at)
        if self.start is None:
            self.start = at

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            self._busy.acquire()
        self.threads.add(threading.current_thread().name)
        time.sleep(self.turn_time)

    def poll(self, languages: frozenset[str]) -> list[Caption]:
        self._enter()
        try:
            if self.samples == self.reported:
                return []
            self.reported = self.samples
            return [self._caption(False, languages)]
        finally:
            self._busy.release()

    def finish(self, languages: frozenset[str]) -> list[Caption]:
        self._enter()
        try:
            if self.hold is not None and self.hold.armed:
                self.hold.released.wait(30)
            self.finishes += 1
            if self.start is None:
                return []
            caption = self._caption(True, languages)
            self.start, self.reported = None, 0
            self.utterance = uuid.uuid4().hex[:8]
            return [caption]
        finally:
            self._busy.release()

    def _caption(self, final: bool, languages: frozenset[str]) -> Caption:
        assert self.start is not None
        text = f"{self.samples} samples"
        return Caption(utterance=self.utterance, final=final, language="en", text=text,
                       start=self.start, end=self.feeds[-1] if self.feeds else self.start,
                       translations={lang: f"[{lang}] {text}" for lang in languages})


def _speaker(name: str, pipeline: CountingPipeline, out: list[tuple[str, Caption]],
             languages: frozenset[str] = frozenset()) -> Speaker:
    return Speaker(name, f"producer-{name}", pipeline,
                   lambda s, c: out.append((s.participant, c)), lambda: languages)


SECOND = np.zeros(16000, np.float32)


# -- scheduler -------------------------------------------------------------------------------


async def test_speakers_take_turns_in_order_and_no_speaker_runs_twice_at_once() -> None:
    scheduler = Scheduler(slots=1, interval=0.0)
    out: list[tuple[str, Caption]] = []
    pipelines = {n: CountingPipeline(turn_time=0.02) for n in "abc"}
    speakers = {n: _speaker(n, p, out) for n, p in pipelines.items()}
    try:
        for _ in range(5):
            for speaker in speakers.values():
                scheduler.feed(speaker, SECOND[:320], time.time())
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + 5
        while scheduler.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await scheduler.close()
    order = [participant for participant, _ in out]
    assert set(order) == {"a", "b", "c"}
    # Round robin: no speaker gets two turns while another one waits.
    assert order[:3] == ["a", "b", "c"]
    for pipeline in pipelines.values():
        assert pipeline.overlaps == 0
        assert pipeline.samples == 5 * 320
    assert all(len(p.threads) >= 1 for p in pipelines.values())
    assert all(t.startswith("captions") for p in pipelines.values() for t in p.threads)


async def test_two_slots_run_two_speakers_at_once_but_never_one_speaker_twice() -> None:
    scheduler = Scheduler(slots=2, interval=0.0)
    out: list[tuple[str, Caption]] = []
    pipelines = [CountingPipeline(turn_time=0.2) for _ in range(2)]
    speakers = [_speaker(str(i), p, out) for i, p in enumerate(pipelines)]
    try:
        started = time.monotonic()
        for speaker in speakers:
            scheduler.feed(speaker, SECOND[:320], time.time())
        while len(out) < 2 and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        await scheduler.close()
    assert len(out) == 2
    assert elapsed < 0.35  # both 0.2 s turns ran side by side
    assert all(p.overlaps == 0 for p in pipelines)


async def test_a_speaker_is_polled_no_more_often_than_the_interval() -> None:
    scheduler = Scheduler(slots=1, interval=0.1)
    out: list[tuple[str, Caption]] = []
    pipeline = CountingPipeline()
    speaker = _speaker("a", pipeline, out)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            scheduler.feed(speaker, SECOND[:320], time.time())
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)
    finally:
        await scheduler.close()
    assert 3 <= scheduler.turns <= 7  # ~25 frames in 0.5 s, but a turn at most every 0.1 s
    assert pipeline.samples == sum(1 for _ in pipeline.feeds) * 320


async def test_finish_feeds_the_last_audio_then_closes_the_utterance_with_a_final() -> None:
    scheduler = Scheduler(slots=1, interval=10.0)  # no poll comes in between
    out: list[tuple[str, Caption]] = []
    pipeline = CountingPipeline()
    speaker = _speaker("a", pipeline, out, frozenset({"uk"}))
    try:
        scheduler.feed(speaker, SECOND, 1000.0)
        await asyncio.sleep(0.05)  # the first turn: a partial
        scheduler.feed(speaker, SECOND, 1001.0)  # waits for the 10 s interval...
        scheduler.finish(speaker, retire=True)  # ...but finish does not
        await asyncio.wait_for(speaker.done.wait(), 5)
    finally:
        await scheduler.close()
    finals = [c for _, c in out if c.final]
    assert len(finals) == 1
    assert finals[0].text == "32000 samples"
    assert finals[0].translations == {"uk": "[uk] 32000 samples"}
    assert pipeline.finishes == 1
    scheduler.feed(speaker, SECOND, 1002.0)  # a retired speaker is not fed any more
    assert pipeline.samples == 32000


async def test_finishing_a_silent_speaker_costs_no_turn() -> None:
    scheduler = Scheduler(slots=1)
    out: list[tuple[str, Caption]] = []
    pipeline = CountingPipeline()
    speaker = _speaker("a", pipeline, out)
    try:
        scheduler.finish(speaker, retire=True)
        assert speaker.done.is_set()
    finally:
        await scheduler.close()
    assert scheduler.turns == 0 and pipeline.finishes == 0


async def test_a_failing_pipeline_does_not_stop_the_other_speakers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(CountingPipeline):
        def poll(self, languages: frozenset[str]) -> list[Caption]:
            raise RuntimeError("broken model")

    scheduler = Scheduler(slots=1, interval=0.0)
    out: list[tuple[str, Caption]] = []
    broken = _speaker("broken", Broken(), out)
    healthy = _speaker("healthy", CountingPipeline(), out)
    try:
        scheduler.feed(broken, SECOND, 1.0)
        scheduler.feed(healthy, SECOND, 1.0)
        deadline = time.monotonic() + 5
        while not out and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await scheduler.close()
    assert [p for p, _ in out] == ["healthy"]
    assert "recognition failed" in caplog.text


# -- outbox ----------------------------------------------------------------------------------


def _message(utterance: str, final: bool, text: str = "") -> dict[str, Any]:
    return {"type": "caption", "utterance": utterance, "final": final, "text": text}


async def test_outbox_keeps_finals_across_a_drop_and_forgets_partials() -> None:
    outbox = CaptionOutbox()
    outbox.post(_message("u1", False, "partial"), connected=True)
    outbox.post(_message("u1", True, "final 1"), connected=True)
    outbox.post(_message("u2", False, "partial"), connected=True)
    outbox.disconnected()
    outbox.post(_message("u2", False, "while away"), connected=False)
    outbox.post(_message("u2", True, "final 2"), connected=False)
    texts = []
    while (message := outbox.peek()) is not None:
        texts.append(message["text"])
        outbox.sent(message)
    # The final replaced the partial of its utterance; partials are not kept while away.
    assert texts == ["final 1", "final 2"]


async def test_finals_sent_just_before_a_drop_are_sent_again_after_it() -> None:
    now = [100.0]
    outbox = CaptionOutbox(resend_window=5.0, clock=lambda: now[0])
    for utterance in ("old", "recent"):
        outbox.post(_message(utterance, True), connected=True)
        message = outbox.peek()
        assert message is not None
        outbox.sent(message)
        now[0] += 10.0 if utterance == "old" else 1.0
    outbox.post(_message("unsent", True), connected=True)
    outbox.disconnected()
    # The server may not have read "recent" before it went; it stores each utterance once.
    assert [m["utterance"] for m in outbox._queue] == ["recent", "unsent"]
    message = outbox.peek()
    assert message is not None
    outbox.sent(message)
    outbox.confirmed()  # a clean leave: everything sent was read
    outbox.disconnected()
    assert [m["utterance"] for m in outbox._queue] == ["unsent"]


async def test_a_newer_partial_replaces_the_unsent_one() -> None:
    outbox = CaptionOutbox()
    outbox.post(_message("u1", False, "one"), connected=True)
    outbox.post(_message("u2", False, "other speaker"), connected=True)
    outbox.post(_message("u1", False, "one two"), connected=True)
    assert [m["text"] for m in outbox._queue] == ["other speaker", "one two"]


async def test_a_new_session_sends_the_finals_an_earlier_one_could_not_deliver_first() -> None:
    old, new = CaptionOutbox(), CaptionOutbox()
    old.post(_message("u1", True, "before the restart"), connected=False)
    new.post(_message("u2", True, "after"), connected=True)
    new.take_over(old)
    assert [m["text"] for m in new._queue] == ["before the restart", "after"]
    assert len(old) == 0


async def test_outbox_drops_the_oldest_final_past_its_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = CaptionOutbox(limit=2)
    for n in range(3):
        outbox.post(_message(f"u{n}", True, f"secret words {n}"), connected=False)
    assert [m["utterance"] for m in outbox._queue] == ["u1", "u2"]
    assert "1 final captions dropped" in caplog.text
    assert "secret words" not in caplog.text


# -- small pieces ----------------------------------------------------------------------------


def _frame(pts: int | None, samples: int = 960) -> AudioFrame:
    frame = AudioFrame(format="s16", layout="stereo", samples=samples)
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


def test_frame_times_follow_the_rtp_clock_and_re_anchor_after_a_jump() -> None:
    clock = FrameClock(tolerance=0.5)
    first = clock.at(_frame(0), now=100.02)
    assert first == pytest.approx(100.0)
    # Arriving in a burst, 60 ms late, the frames keep their 20 ms spacing.
    assert clock.at(_frame(960), now=100.1) == pytest.approx(100.02)
    assert clock.at(_frame(1920), now=100.1) == pytest.approx(100.04)
    # The producer restarted its clock: anchor again on arrival.
    assert clock.at(_frame(0), now=200.02) == pytest.approx(200.0)
    assert clock.at(_frame(None), now=300.02) == pytest.approx(300.0)


def test_backoff_doubles_to_five_seconds_with_jitter() -> None:
    assert backoff(0, lambda: 0.5) == pytest.approx(0.5)
    assert backoff(1, lambda: 0.5) == pytest.approx(1.0)
    assert backoff(10, lambda: 0.5) == pytest.approx(5.0)
    assert backoff(100, lambda: 1.0) == pytest.approx(6.0)
    assert backoff(3, lambda: 0.0) == pytest.approx(3.2)


def test_socket_urls_follow_the_servers_scheme_and_path() -> None:
    assert socket_urls("http://127.0.0.1:8080") == (
        "ws://127.0.0.1:8080/ws/captions", "ws://127.0.0.1:8080/ws")
    assert socket_urls("https://meet.example.org/townhall/") == (
        "wss://meet.example.org/townhall/ws/captions", "wss://meet.example.org/townhall/ws")
    with pytest.raises(BadRequest, match="--server must be an http"):
        socket_urls("meet.example.org")


def test_speech_languages_are_iso_codes() -> None:
    assert parse_languages(" en, RU,uk ") == frozenset({"en", "ru", "uk"})
    for bad in ("", "english", "en,xx"):
        with pytest.raises(BadRequest, match="--speech-languages takes ISO 639-1 codes"):
            parse_languages(bad)


# -- one room over the real server -----------------------------------------------------------


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_a_room_session_hears_each_speaker_under_their_own_id_and_refuses_video(
    server: RunningServer,
) -> None:
    import aiohttp

    room = await server.create_room("captioned")
    speaker = Attendee(server.ws_url, server.token(room, "speaker"), "Olena")
    await speaker.join()
    await speaker.publish()  # a tone and a test pattern
    pipelines: list[CountingPipeline] = []

    def pipeline() -> CountingPipeline:
        pipelines.append(CountingPipeline())
        return pipelines[-1]

    scheduler = Scheduler()
    async with aiohttp.ClientSession() as http:
        session = RoomSession(server.ws_url, room, server.token(room, "caption", 60),
                              http=http, scheduler=scheduler, pipelines=pipeline)
        session.start()
        try:
            await asyncio.wait_for(session.joined.wait(), 10)
            await _until(lambda: bool(session.speakers) and pipelines[0].samples >= 16000,
                         15, "a second of the speaker's audio")
            assert [s.participant for s in session.speakers] == [speaker.id]
            assert len(pipelines) == 1  # the camera is not a speaker
            live = server.running.services.registry.find(room)
            assert live is not None
            worker = live.participants[session.participant or ""]
            assert worker.role == "caption"
            # The video consumer was answered inactive: the SFU forwards no video to the worker.
            assert all(c.slot.payload_type is None for c in worker.consumers.values()
                       if c.producer.kind == "video")
            # 16 kHz mono, timed close to now.
            assert abs(pipelines[0].feeds[-1] - time.time()) < 1.0
            await speaker.close()  # leaves mid-word
            await _until(lambda: pipelines[0].finishes >= 1 and not session.speakers, 10,
                         "the departed speaker's utterance closed")
        finally:
            await speaker.close()
            await session.close()
            await scheduler.close()


@contextlib.asynccontextmanager
async def _one_speaker(
    server: RunningServer, room_name: str, hold: Hold | None = None,
) -> AsyncIterator[tuple[Attendee, RoomSession, Pipelines]]:
    """A room with one speaker publishing audio, and a worker's session in it."""
    import aiohttp

    room = await server.create_room(room_name)
    speaker = Attendee(server.ws_url, server.token(room, "speaker"), "Olena")
    await speaker.join()
    await speaker.publish(video=False)
    pipelines = Pipelines(hold)
    scheduler = Scheduler()
    async with aiohttp.ClientSession() as http:
        session = RoomSession(server.ws_url, room, server.token(room, "caption", 60),
                              http=http, scheduler=scheduler, pipelines=pipelines)
        session.start()
        try:
            await _until(lambda: bool(pipelines.made) and pipelines.made[0].samples > 8000, 15,
                         "the speaker is heard")
            yield speaker, session, pipelines
        finally:
            if hold is not None:
                hold.released.set()
            await speaker.close()
            await session.close()
            await scheduler.close()


async def test_a_speaker_who_mutes_has_their_utterance_closed_and_is_heard_again_after(
    server: RunningServer,
) -> None:
    async with _one_speaker(server, "muting") as (speaker, session, pipelines):
        pipeline = pipelines.made[0]
        await speaker.send({"type": "media", "source": "microphone", "enabled": False})
        await _until(lambda: pipeline.finishes >= 1, 5, "the utterance closed")
        assert len(session.speakers) == 1  # still in the meeting, still a speaker
        heard = pipeline.samples
        await speaker.send({"type": "media", "source": "microphone", "enabled": True})
        await _until(lambda: pipeline.samples > heard + 8000, 10, "heard again")
        assert len(pipelines.made) == 1


async def test_a_worker_whose_receiving_connection_is_lost_hears_the_speaker_on_a_new_one(
    server: RunningServer,
) -> None:
    async with _one_speaker(server, "lost receiving") as (speaker, session, pipelines):
        first = pipelines.made[0]
        live = server.running.services.registry.find(session.room_id)
        assert live is not None
        worker = live.participants[session.participant or ""]
        lost = worker.subscribe_transport
        assert lost is not None
        await lost.close()  # as when ICE gives up
        await _until(lambda: first.finishes >= 1, 5, "the utterance on the lost one closed")
        await _until(lambda: len(pipelines.made) == 2 and pipelines.made[1].samples > 8000, 15,
                     "the speaker heard on the new connection")
        assert worker.subscribe_connection == 2
        assert session.participant == worker.id, "the same place: no drop and join again"
        assert [s.participant for s in session.speakers] == [speaker.id]


async def test_a_close_cancelled_while_finals_are_awaited_still_leaves_nothing_running(
    server: RunningServer,
) -> None:
    hold = Hold()
    async with _one_speaker(server, "cancelled close", hold) as (speaker, session, _):
        hold.armed = True  # the last final takes its time
        closing = asyncio.ensure_future(session.close(timeout=20))
        await asyncio.sleep(0.5)
        assert not closing.done()
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        assert not session.connected and session.speakers == []
        left = await speaker.wait_for("participant-left", timeout=10)
        assert left["participant"] == session.participant


# -- the worker over the real server ---------------------------------------------------------


class Pipelines:
    """Makes a :class:`CountingPipeline` per speaker and keeps them."""

    def __init__(self, hold: Hold | None = None) -> None:
        self.made: list[CountingPipeline] = []
        self.hold = hold

    def __call__(self) -> CountingPipeline:
        self.made.append(CountingPipeline(hold=self.hold))
        return self.made[-1]


async def _running(worker: Worker) -> asyncio.Task[None]:
    return asyncio.ensure_future(worker.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _captions(attendee: Attendee, **where: Any) -> list[dict[str, Any]]:
    return [m for m in attendee.messages if m["type"] == "caption"
            and all(m.get(k) == v for k, v in where.items())]


async def test_the_worker_captions_a_room_while_its_captions_are_on_in_the_languages_wanted(
    server: RunningServer,
) -> None:
    room = await server.create_room("switched")
    host = Attendee(server.ws_url, server.token(room, "host"), "Ганна")
    listener = Attendee(server.ws_url, server.token(room, "listener"), "Taras")
    worker = Worker(server.base_url, server.token("*", "caption"), Pipelines())
    task = await _running(worker)
    try:
        await host.join()
        await listener.join()
        await host.publish(video=False)
        await asyncio.sleep(1.0)
        assert worker.sessions == {}  # captions are off: the worker stays away
        await host.send({"type": "captions", "enabled": True})
        joined = await listener.wait_for(
            "participant-joined", where=lambda m: m["participant"]["role"] == "caption")
        caption = await listener.wait_for("caption", timeout=15)
        assert caption["participant"] == host.id and caption["name"] == "Ганна"
        assert caption["text"].endswith(" samples") and caption["translated"] is None

        await listener.send({"type": "caption-language", "language": "uk"})
        translated = await listener.wait_for("caption", timeout=15,
                                             where=lambda m: m["translated"] == "uk")
        assert translated["text"] == f"[uk] {translated['original']}"
        assert worker.sessions[room].languages == frozenset({"uk"})

        await host.send({"type": "captions", "enabled": False})
        await listener.wait_for("participant-left", timeout=15,
                                where=lambda m: m["participant"] == joined["participant"]["id"])
        assert worker.sessions == {}
        heard = len(_captions(listener))
        await asyncio.sleep(1.0)
        assert len(_captions(listener)) == heard
    finally:
        await _stop(task)
        await host.close()
        await listener.close()


@pytest.mark.parametrize(("token", "reason"), [
    (lambda s, room: tokens.sign(b"another server", "*", "caption", 600, time.time()),
     "4401 unauthorized: token signature invalid"),
    (lambda s, room: tokens.sign(s, "*", "caption", 10, time.time() - 60),
     "4401 unauthorized: token expired"),
    (lambda s, room: tokens.sign(s, room, "caption", 600, time.time()),
     "4403 forbidden: a captions worker token is needed"),
])
async def test_a_refused_worker_token_stops_the_worker_with_the_servers_reason(
    server: RunningServer, token: Callable[[bytes, str], str], reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = await server.create_room("any")
    secret = server.running.services.secret
    value = token(secret, room)
    worker = Worker(server.base_url, value, Pipelines())
    started = time.monotonic()
    with pytest.raises(Unauthorized) as refused:
        await asyncio.wait_for(worker.run(), 10)
    assert time.monotonic() - started < 5  # no retrying with a token the server refused
    assert str(refused.value) == f"the server refused the captions worker token ({reason})"
    assert value not in caplog.text


async def test_a_final_cut_off_by_a_server_restart_is_stored_after_it_and_captions_go_on(
    tmp_path: Path, unused_tcp_port: int,
) -> None:
    config = make_config(tmp_path / "data").replace(http_port=unused_tcp_port)
    running = await server_app.start(config)
    server = RunningServer(running)
    room = await server.create_room("durable")
    await running.services.store.set_captions(room, True)
    token = server.token(room, "host")
    # Finals wait until the server is down, however its shutdown orders the host's leaving and
    # the worker's socket closing: the utterance is cut off by the restart.
    server_down = Hold()
    pipelines = Pipelines(hold=server_down)
    worker = Worker(server.base_url, server.token("*", "caption"), pipelines)
    task = await _running(worker)
    host = Attendee(server.ws_url, token, "Ганна")
    try:
        await host.join()
        meeting = host.joined["meeting"]["id"]
        await host.publish(video=False)
        partial = await host.wait_for("caption", timeout=15, where=lambda m: not m["final"])
        before = host.id
        server_down.armed = True
        await running.stop()  # mid-utterance: its final cannot be sent now
        server_down.released.set()
        await host.close()
        await _until(lambda: bool(pipelines.made) and pipelines.made[0].finishes > 0, 10,
                     "the cut utterance closed")
        await _until(lambda: worker.undelivered >= 1, 10, "the final kept for later")

        running = await server_app.start(config)
        server = RunningServer(running)
        host = Attendee(server.ws_url, token, "Ганна")
        await host.join()
        assert host.joined["meeting"]["id"] == meeting
        late = await host.wait_for("caption", timeout=20,
                                   where=lambda m: m["utterance"] == partial["utterance"])
        assert late["final"] and late["participant"] == before and late["name"] == "Ганна"
        await host.publish(video=False)
        await host.wait_for("caption", timeout=20, where=lambda m: m["participant"] == host.id)
        stored = await running.services.store.captions(meeting)
        assert [(c.utterance, c.participant_id) for c in stored][:1] == [
            (partial["utterance"], before)]
    finally:
        server_down.released.set()
        await _stop(task)
        await host.close()
        await running.stop()


async def test_a_missing_model_stops_townhall_captions_at_start_before_it_contacts_the_server(
    tmp_path: Path,
) -> None:
    connections = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    missing = tmp_path / "no-such-model"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "townhall", "captions", "--server", f"http://127.0.0.1:{port}",
            "--token", "a-token", "--asr-model", str(missing),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        listener.close()
        await listener.wait_closed()
    assert process.returncode == 2
    message = err.decode()
    assert message.startswith("townhall: no Whisper model directory at ")
    assert str(missing) in message and "a-token" not in message
    assert connections == 0
