"""Captions on the server: the room setting, listeners' languages, relaying, storing, and the
worker's control socket. A test participant holding a caption-role token plays the worker's part:
its ``caption`` messages are exactly what the server gets from the real worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support import Attendee, RunningServer, make_config
from townhall.auth import tokens
from townhall.server import app as server_app
from townhall.server import captions as control

T = 1_800_000_000.0


def caption(speaker: str, utterance: str = "u-1", *, final: bool = True, language: str = "ru",
            text: str = "Добрый день", **more: Any) -> dict[str, Any]:
    message = {"type": "caption", "participant": speaker, "utterance": utterance,
               "final": final, "language": language, "text": text, "start": T, "end": T + 1.5,
               "translations": {"en": "Good afternoon", "uk": "Добрий день"}}
    message.update(more)
    return message


async def join(server: RunningServer, room: str, role: str, name: str) -> Attendee:
    attendee = Attendee(server.ws_url, server.token(room, role), name)
    await attendee.join()
    return attendee


def of_type(attendee: Attendee, kind: str) -> list[dict[str, Any]]:
    return [m for m in attendee.messages if m["type"] == kind]


async def error_for(attendee: Attendee, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` and return the ``error`` it gets (the next one after sending)."""
    seen = len(of_type(attendee, "error"))
    await attendee.send(message)
    await attendee.wait_for("error", where=lambda m: len(of_type(attendee, "error")) > seen
                            and m is of_type(attendee, "error")[seen])
    return of_type(attendee, "error")[seen]


async def round_trip(attendee: Attendee) -> None:
    """Everything sent before this has been handled by the server."""
    count = len(of_type(attendee, "pong"))
    await attendee.send({"type": "ping"})
    await attendee.wait_for("pong", where=lambda m: len(of_type(attendee, "pong")) > count)


@pytest.fixture
async def captioned(server: RunningServer) -> AsyncIterator[tuple[str, Attendee, Attendee]]:
    """A room with captions on: a host, and the worker's stand-in (caption role)."""
    room = await server.create_room("captioned")
    host = await join(server, room, "host", "Ганна")
    await host.send({"type": "captions", "enabled": True})
    await host.wait_for("captions", where=lambda m: m["enabled"])
    worker = await join(server, room, "caption", "Captions")
    try:
        yield room, host, worker
    finally:
        await worker.close()
        await host.close()


# -- the room setting --------------------------------------------------------------------------


async def test_a_host_turns_captions_on_everyone_is_told_and_newcomers_see_it_on_joining(
    server: RunningServer,
) -> None:
    room = await server.create_room("setting")
    host = await join(server, room, "host", "host")
    listener = await join(server, room, "listener", "listener")
    try:
        assert host.joined["room"]["captions"] is False
        await host.send({"type": "captions", "enabled": True})
        told = await listener.wait_for("captions")
        assert told == {"type": "captions", "enabled": True}
        assert (await host.wait_for("captions"))["enabled"] is True
        assert (await server.running.services.store.get_room(room)).captions is True
        late = await join(server, room, "speaker", "late")
        assert late.joined["room"]["captions"] is True
        await host.send({"type": "captions", "enabled": False})
        await late.wait_for("captions", where=lambda m: m["enabled"] is False)
        assert (await server.running.services.store.get_room(room)).captions is False
        await late.close()
    finally:
        await host.close()
        await listener.close()


async def test_only_a_host_can_turn_captions_on(server: RunningServer) -> None:
    room = await server.create_room("no moderate")
    speaker = await join(server, room, "speaker", "speaker")
    try:
        error = await error_for(speaker, {"type": "captions", "enabled": True})
        assert (error["code"], error["request"]) == ("forbidden", "captions")
        assert error["message"] == "only a host can turn captions on or off"
        bad = await error_for(speaker, {"type": "captions", "enabled": "yes"})
        assert (bad["code"], bad["message"]) == ("bad-request", "enabled must be true or false")
        assert (await server.running.services.store.get_room(room)).captions is False
        assert of_type(speaker, "captions") == []
    finally:
        await speaker.close()


# -- captions from the worker -------------------------------------------------------------------


async def test_a_caption_from_a_participant_without_the_caption_permission_is_forbidden(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    room, host, _worker = captioned
    speaker = await join(server, room, "speaker", "speaker")
    try:
        error = await error_for(speaker, caption(host.id))
        assert (error["code"], error["request"]) == ("forbidden", "caption")
        # Malformed or not, it is the permission that refuses it.
        error = await error_for(speaker, {"type": "caption"})
        assert error["code"] == "forbidden"
        await round_trip(host)
        assert of_type(host, "caption") == []
        assert await server.running.services.store.captions(host.joined["meeting"]["id"]) == []
    finally:
        await speaker.close()


@pytest.mark.parametrize(("change", "message"), [
    ({"participant": 7}, "participant must be a participant id"),
    ({"participant": ""}, "participant must be a participant id"),
    ({"utterance": ""}, "utterance must be a string of 1 to 128 characters"),
    ({"utterance": "u" * 129}, "utterance must be a string of 1 to 128 characters"),
    ({"final": "yes"}, "final must be true or false"),
    ({"language": "russian"}, "language must be an ISO 639-1 code"),
    ({"language": "RU"}, "language must be an ISO 639-1 code"),
    ({"language": "xx"}, "language must be an ISO 639-1 code"),
    ({"language": None}, "language must be an ISO 639-1 code"),
    ({"text": None}, "text must be a string of at most 4000 characters"),
    ({"text": "x" * 4001}, "text must be a string of at most 4000 characters"),
    ({"start": "now"}, "start must be unix seconds"),
    ({"start": True}, "start must be unix seconds"),
    ({"start": -1}, "start must be unix seconds"),
    ({"end": float("inf")}, "end must be unix seconds"),
    ({"end": T - 1}, "end must not be before start"),
    ({"end": T + 3601}, "an utterance must not be longer than 3600 seconds"),
    ({"translations": ["en"]}, "translations must be an object of at most 32"),
    ({"translations": {"english": "hi"}}, "translations must be keyed by ISO 639-1 codes"),
    ({"translations": {"en": 5}}, "translations.en must be a string of at most 4000 characters"),
])
async def test_a_malformed_caption_is_refused_naming_the_field_and_harms_nothing(
    captioned: tuple[str, Attendee, Attendee], server: RunningServer,
    change: dict[str, Any], message: str,
) -> None:
    _room, host, worker = captioned
    bad = caption(host.id)
    bad.update(change)
    error = await error_for(worker, bad)
    assert (error["code"], error["message"], error["request"]) == (
        "bad-request", message, "caption")
    await worker.send(caption(host.id, "u-good", text="всё хорошо"))
    relayed = await host.wait_for("caption")
    assert relayed["original"] == "всё хорошо"
    stored = await server.running.services.store.captions(host.joined["meeting"]["id"])
    assert [c.utterance for c in stored] == ["u-good"]


async def test_a_caption_must_name_a_speaker_of_this_meeting_and_captions_must_be_on(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    _room, host, worker = captioned
    other_room = await server.create_room("elsewhere")
    stranger = await join(server, other_room, "speaker", "stranger")
    try:
        error = await error_for(worker, caption(stranger.id))
        assert (error["code"], error["message"]) == (
            "bad-request", "participant is not in this meeting")
        error = await error_for(worker, caption(worker.id))
        assert error["message"] == "participant must be someone who speaks, not a captions worker"
        await host.send({"type": "captions", "enabled": False})
        await worker.wait_for("captions", where=lambda m: m["enabled"] is False)
        error = await error_for(worker, caption(host.id))
        assert (error["code"], error["message"]) == ("conflict", "captions are off in this room")
        await round_trip(host)
        assert of_type(host, "caption") == []
        assert of_type(stranger, "caption") == []
    finally:
        await stranger.close()


async def test_each_listener_reads_the_caption_in_the_language_they_chose(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    room, host, worker = captioned
    english = await join(server, room, "listener", "english")
    ukrainian = await join(server, room, "listener", "ukrainian")
    french = await join(server, room, "speaker", "french")
    people = [english, ukrainian, french]
    try:
        await english.send({"type": "caption-language", "language": "en"})
        await ukrainian.send({"type": "caption-language", "language": "uk"})
        await french.send({"type": "caption-language", "language": "fr"})
        await worker.wait_for("caption-languages",
                              where=lambda m: m["languages"] == ["en", "fr", "uk"])

        await worker.send(caption(host.id, "u-1", final=False, text="Добрый"))
        await worker.send(caption(host.id, "u-1", text="Добрый день"))

        final = {p.name: await p.wait_for("caption", where=lambda m: m["final"])
                 for p in [host, *people]}
        assert final["english"] == {
            "type": "caption", "participant": host.id, "name": "Ганна", "utterance": "u-1",
            "final": True, "language": "ru", "text": "Good afternoon",
            "original": "Добрый день", "translated": "en",
        }
        assert (final["ukrainian"]["text"], final["ukrainian"]["translated"]) == (
            "Добрий день", "uk")
        # No French translation: the original, marked as not translated.
        assert (final["french"]["text"], final["french"]["translated"]) == ("Добрый день", None)
        # The speaker chose nothing and reads their own words as spoken.
        assert (final["Ганна"]["text"], final["Ганна"]["translated"]) == ("Добрый день", None)
        partial = await english.wait_for("caption", where=lambda m: not m["final"])
        assert (partial["utterance"], partial["original"]) == ("u-1", "Добрый")
        await round_trip(worker)
        assert of_type(worker, "caption") == [], "the worker never receives captions"
    finally:
        for p in people:
            await p.close()


async def test_the_worker_is_told_the_languages_listeners_want_whenever_they_change(
    server: RunningServer,
) -> None:
    room = await server.create_room("languages")
    host = await join(server, room, "host", "host")
    listener = await join(server, room, "listener", "listener")
    try:
        await listener.send({"type": "caption-language", "language": "en"})
        await round_trip(listener)
        worker = await join(server, room, "caption", "Captions")
        first = await worker.wait_for("caption-languages")
        assert first["languages"] == ["en"]
        assert worker.messages.index(first) == 1, "right after joined"

        await host.send({"type": "caption-language", "language": "uk"})
        await worker.wait_for("caption-languages", where=lambda m: m["languages"] == ["en", "uk"])
        await host.send({"type": "caption-language", "language": "en"})
        await worker.wait_for("caption-languages", where=lambda m: m["languages"] == ["en"]
                              and len(of_type(worker, "caption-languages")) == 3)
        await host.send({"type": "caption-language", "language": None})
        await round_trip(host)
        await round_trip(worker)
        assert len(of_type(worker, "caption-languages")) == 3, "no news, no message"
        await listener.send({"type": "leave"})
        await worker.wait_for("caption-languages", where=lambda m: m["languages"] == [])

        for bad in ("english", "EN", 5, "", "zz"):
            error = await error_for(host, {"type": "caption-language", "language": bad})
            assert (error["code"], error["message"]) == (
                "bad-request", "language must be an ISO 639-1 code or null")
        error = await error_for(host, {"type": "caption-language"})
        assert error["code"] == "bad-request"
        await worker.close()
    finally:
        await host.close()
        await listener.close()


async def test_a_listener_keeps_their_caption_language_when_they_resume(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    room, host, worker = captioned
    listener = await join(server, room, "listener", "listener")
    await listener.send({"type": "caption-language", "language": "uk"})
    await worker.wait_for("caption-languages", where=lambda m: m["languages"] == ["uk"])
    resume = listener.joined["resume"]
    await listener.close()
    await host.wait_for("participant-updated", where=lambda m: not m["participant"]["connected"])
    back = Attendee(server.ws_url, listener.token, "listener")
    try:
        assert (await back.join(resume=resume))["resumed"] is True
        await worker.send(caption(host.id))
        relayed = await back.wait_for("caption")
        assert (relayed["text"], relayed["translated"]) == ("Добрий день", "uk")
    finally:
        await back.close()


async def test_a_final_caption_is_stored_once_and_partials_are_not_stored(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    _room, host, worker = captioned
    store = server.running.services.store
    meeting = host.joined["meeting"]["id"]
    await worker.send(caption(host.id, "w1-1", final=False, text="Добрый"))
    await host.wait_for("caption", where=lambda m: not m["final"])
    assert await store.captions(meeting) == []
    await worker.send(caption(host.id, "w1-1", text="Добрый день"))
    await worker.send(caption(host.id, "w1-1", text="Добрый день"))  # resent after a reconnect
    await worker.send(caption(host.id, "w1-2", text="", final=True))  # nothing was said
    await host.wait_for("caption", where=lambda m: m["utterance"] == "w1-2")
    [stored] = await store.captions(meeting)
    assert (stored.participant_id, stored.name, stored.utterance, stored.language) == (
        host.id, "Ганна", "w1-1", "ru")
    assert (stored.text, stored.start, stored.end) == ("Добрый день", T, T + 1.5)
    assert stored.translations == {"en": "Good afternoon", "uk": "Добрий день"}


async def test_the_last_words_of_a_speaker_who_left_keep_their_name(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    room, host, worker = captioned
    leaving = await join(server, room, "speaker", "Марко")
    await leaving.send({"type": "leave"})
    await host.wait_for("participant-left")
    await worker.send(caption(leaving.id, "last", text="до побачення", language="uk"))
    relayed = await host.wait_for("caption")
    assert (relayed["participant"], relayed["name"]) == (leaving.id, "Марко")
    [stored] = await server.running.services.store.captions(host.joined["meeting"]["id"])
    assert stored.name == "Марко"
    await leaving.close()


async def test_the_transcript_survives_a_server_restart_and_a_resent_final_is_kept_once(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    running = await server_app.start(config)
    people: list[Attendee] = []
    try:
        server = RunningServer(running)
        room = await server.create_room("durable")
        host = await join(server, room, "host", "Ганна")
        people.append(host)
        await host.send({"type": "captions", "enabled": True})
        worker = await join(server, room, "caption", "Captions")
        people.append(worker)
        meeting = host.joined["meeting"]["id"]
        await worker.send(caption(host.id, "w-1", text="before the restart", language="en"))
        await host.wait_for("caption")
    finally:
        await running.stop()
        for p in people:
            await p.close()
    running = await server_app.start(config)
    try:
        server = RunningServer(running)
        back = await join(server, room, "host", "Ганна")
        assert back.joined["meeting"]["id"] == meeting
        assert back.joined["room"]["captions"] is True
        worker = await join(server, room, "caption", "Captions")
        stored = await running.services.store.captions(meeting)
        assert [(c.utterance, c.text, c.name) for c in stored] == [
            ("w-1", "before the restart", "Ганна")]
        # The worker resends its last final: the speaker's id from before the restart is still
        # one of the meeting's (attendance knows it), and the caption is not stored twice.
        await worker.send(caption(host.id, "w-1", text="before the restart", language="en"))
        resent = await back.wait_for("caption")
        assert (resent["participant"], resent["name"]) == (host.id, "Ганна")
        await worker.send(caption(back.id, "w-2", text="after the restart", language="en"))
        await back.wait_for("caption", where=lambda m: m["utterance"] == "w-2")
        stored = await running.services.store.captions(meeting)
        assert [c.text for c in stored] == ["before the restart", "after the restart"]
        await worker.close()
        await back.close()
    finally:
        await running.stop()


async def test_a_meeting_left_to_the_worker_alone_ends(
    server: RunningServer, captioned: tuple[str, Attendee, Attendee]
) -> None:
    room, host, worker = captioned
    meeting = host.joined["meeting"]["id"]
    await host.send({"type": "leave"})
    for _ in range(50):
        if worker.closed:
            break
        await asyncio.sleep(0.1)
    assert worker.closed is not None and worker.closed[0] == 1001
    assert (await server.running.services.store.get_meeting(meeting)).ended_at is not None
    assert server.running.services.registry.find(room) is None


async def test_a_caption_token_joins_a_meeting_going_on_but_never_starts_one(
    server: RunningServer,
) -> None:
    room = await server.create_room("quiet")
    worker = Attendee(server.ws_url, server.token(room, "caption"), "Captions")
    with pytest.raises(ConnectionError, match="4404"):
        await worker.join()
    await worker.close()
    assert await server.running.services.store.meetings_of(room) == []


# -- the worker's control socket -------------------------------------------------------------


class ControlSocket:
    def __init__(self, server: RunningServer) -> None:
        self.url = server.base_url.replace("http", "ws", 1) + "/ws/captions"
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self, *messages: Any) -> None:
        self.ws = await self.http.ws_connect(self.url)
        for message in messages:
            await self.ws.send_json(message)

    async def next(self, kind: str = "rooms", timeout: float = 5) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            reply = await self.ws.receive(timeout=timeout)
            if reply.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed with {self.ws.close_code} {reply.extra}")
            message: dict[str, Any] = reply.json()
            if message["type"] == kind:
                return message

    async def closed_with(self) -> tuple[int | None, str]:
        assert self.ws is not None
        reply = await self.ws.receive(timeout=15)
        while reply.type == aiohttp.WSMsgType.TEXT:
            reply = await self.ws.receive(timeout=15)
        return self.ws.close_code, str(reply.extra or "")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


def worker_token(server: RunningServer, ttl: int = 3600, now: float | None = None) -> str:
    secret = server.running.services.secret
    return control.worker_token(secret, ttl, time.time() if now is None else now)


async def test_the_control_socket_lists_live_rooms_with_captions_on_as_they_change(
    server: RunningServer,
) -> None:
    room = await server.create_room("Зал")
    quiet = await server.create_room("quiet")
    socket = ControlSocket(server)
    try:
        await socket.open({"type": "hello", "token": worker_token(server)})
        assert (await socket.next())["rooms"] == []
        host = await join(server, room, "host", "host")
        other = await join(server, quiet, "host", "other host")
        await host.send({"type": "captions", "enabled": True})
        listed = await socket.next()
        while not listed["rooms"]:
            listed = await socket.next()
        [entry] = listed["rooms"]
        assert (entry["id"], entry["name"]) == (room, "Зал")
        grant = tokens.verify(server.running.services.secret, entry["token"], time.time())
        assert (grant.room_id, grant.role) == (room, "caption")
        assert grant.expires_at <= time.time() + control.ROOM_TOKEN_TTL + 1

        worker = Attendee(server.ws_url, entry["token"], "Captions")
        assert (await worker.join())["room"]["id"] == room

        await host.send({"type": "leave"})
        while (await socket.next())["rooms"]:
            pass
        await worker.close()
        await other.close()

        # A room whose captions were on before its meeting starts is listed when it starts.
        later = await server.create_room("later")
        await server.running.services.store.set_captions(later, True)
        again = await join(server, later, "speaker", "again")
        listed = await socket.next()
        assert [r["id"] for r in listed["rooms"]] == [later]
        await again.close()
        await host.close()
    finally:
        await socket.close()


async def test_every_rooms_message_renews_the_worker_token_and_they_keep_coming(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "RENEW_EVERY", 0.3)
    socket = ControlSocket(server)
    try:
        # An old worker token, nearly expired, is enough to connect and get a fresh one.
        await socket.open({"type": "hello",
                           "token": worker_token(server, ttl=60, now=time.time() - 55)})
        renewed = [(await socket.next())["token"] for _ in range(3)]
        assert len(set(renewed)) == 3
        for token in renewed:
            grant = tokens.verify(server.running.services.secret, token, time.time())
            assert (grant.room_id, grant.role) == ("*", "caption")
            assert grant.expires_at >= time.time() + control.WORKER_TOKEN_TTL - 5
        await socket.ws.send_json({"type": "ping"})  # type: ignore[union-attr]
        assert await socket.next("pong") == {"type": "pong"}
        await socket.ws.send_json({"type": "join"})  # type: ignore[union-attr]
        error = await socket.next("error")
        assert (error["code"], error["request"]) == ("bad-request", "join")
        second = ControlSocket(server)
        await second.open({"type": "hello", "token": renewed[-1]})
        assert (await second.next())["rooms"] == []
        await second.close()
    finally:
        await socket.close()


@pytest.mark.parametrize(("hello", "closed"), [
    ({"type": "hello", "token": "forged"}, (4401, "unauthorized: token malformed")),
    ({"type": "hello"}, (4401, "unauthorized: token missing")),
    ({"type": "join", "token": "x"}, (4400, "bad request: the first message must be hello")),
])
async def test_a_control_socket_without_a_valid_hello_is_closed(
    server: RunningServer, hello: dict[str, Any], closed: tuple[int, str]
) -> None:
    socket = ControlSocket(server)
    try:
        await socket.open(hello)
        assert await socket.closed_with() == closed
    finally:
        await socket.close()


async def test_forged_expired_and_wrong_kinds_of_token_are_refused_by_the_control_socket(
    server: RunningServer,
) -> None:
    secret = server.running.services.secret
    now = time.time()
    room = await server.create_room("r")
    cases = [
        (tokens.sign(b"another server", "*", "caption", 600, now),
         (4401, "unauthorized: token signature invalid")),
        (worker_token(server, ttl=10, now=now - 60), (4401, "unauthorized: token expired")),
        (tokens.sign(secret, "*", "admin", 600, now),
         (4403, "forbidden: a captions worker token is needed")),
        (tokens.sign(secret, room, "caption", 600, now),
         (4403, "forbidden: a captions worker token is needed")),
        (tokens.sign(secret, room, "host", 600, now),
         (4403, "forbidden: a captions worker token is needed")),
    ]
    for token, closed in cases:
        socket = ControlSocket(server)
        try:
            await socket.open({"type": "hello", "token": token})
            assert await socket.closed_with() == closed
        finally:
            await socket.close()


# -- the setting through the HTTP API --------------------------------------------------------


async def test_the_api_switches_a_rooms_captions_and_a_live_meeting_is_told(
    server: RunningServer,
) -> None:
    room = await server.create_room("api")
    listener = await join(server, room, "listener", "listener")
    url = f"{server.base_url}/api/rooms/{room}"
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    host = {"Authorization": f"Bearer {server.token(room, 'host')}"}
    speaker = {"Authorization": f"Bearer {server.token(room, 'speaker')}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.patch(url, json={"captions": True}, headers=admin) as response:
                assert response.status == 200
                body = await response.json()
                assert (body["id"], body["captions"]) == (room, True)
            assert (await listener.wait_for("captions"))["enabled"] is True
            async with http.get(url, headers=speaker) as response:
                assert (await response.json())["captions"] is True
            async with http.patch(url, json={"captions": False}, headers=host) as response:
                assert (await response.json())["captions"] is False
            await listener.wait_for("captions", where=lambda m: m["enabled"] is False)
            for headers, body, status in [
                (speaker, {"captions": True}, 403),
                ({}, {"captions": True}, 401),
                (admin, {"captions": "on"}, 400),
                (admin, {"name": "renamed"}, 400),
            ]:
                async with http.patch(url, json=body, headers=headers) as response:
                    assert response.status == status, (headers, body)
            async with http.patch(f"{server.base_url}/api/rooms/{'f' * 32}",
                                  json={"captions": True}, headers=admin) as response:
                assert response.status == 404
        assert (await server.running.services.store.get_room(room)).captions is False
    finally:
        await listener.close()
