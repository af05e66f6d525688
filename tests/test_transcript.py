"""The transcript: WebVTT and JSON written from stored captions, from the command line and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest

from support import RunningServer
from townhall.cli import main
from townhall.config import Config
from townhall.errors import BadRequest
from townhall.minutes.transcript import timestamp, to_dict, to_json, to_webvtt, write
from townhall.store import CaptionRecord, MeetingRecord, Store

T0 = 1_800_000_000.0
MEETING = MeetingRecord("m" * 32, "r" * 32, T0, T0 + 3600)


def record(n: int, name: str, start: float, end: float, text: str, language: str = "en",
           translations: dict[str, str] | None = None) -> CaptionRecord:
    return CaptionRecord(n, MEETING.id, f"p{n}", name, f"u-{n}", T0 + start, T0 + end, language,
                         text, translations or {})


# -- WebVTT ------------------------------------------------------------------------------


def test_webvtt_has_one_cue_per_caption_with_the_speaker_as_voice_and_meeting_times() -> None:
    captions = [
        record(1, "Ann", 1.5, 3.25, "Hello, everyone."),
        record(2, "Борис", 62.0, 65.5, "Добрый день", "ru", {"en": "Good afternoon"}),
    ]
    assert to_webvtt(MEETING, captions) == (
        "WEBVTT\n"
        "\n"
        f"NOTE\nTranscript of meeting {MEETING.id}, started 2027-01-15T08:00:00+00:00.\n"
        "Times are from the start of the meeting.\n"
        "\n"
        "1\n"
        "00:00:01.500 --> 00:00:03.250\n"
        "<v Ann>Hello, everyone.\n"
        "\n"
        "2\n"
        "00:01:02.000 --> 00:01:05.500\n"
        "<v Борис>Добрый день\n"
    )


def test_webvtt_in_a_language_uses_the_translation_where_there_is_one() -> None:
    captions = [
        record(1, "Ann", 1, 2, "Hello", "en", {"uk": "Привіт"}),
        record(2, "Борис", 3, 4, "Добрый день", "ru", {"en": "Good afternoon"}),
    ]
    cues = to_webvtt(MEETING, captions, "uk").split("\n\n")[2:]
    assert [cue.splitlines()[-1] for cue in cues] == ["<v Ann>Привіт", "<v Борис>Добрый день"]
    english = to_webvtt(MEETING, captions, "en").split("\n\n")[2:]
    assert [cue.splitlines()[-1] for cue in english] == ["<v Ann>Hello", "<v Борис>Good afternoon"]


def test_webvtt_escapes_markup_and_arrows_and_keeps_each_caption_in_one_cue() -> None:
    captions = [
        record(1, "<Bob> & Co\nLtd", 1, 2, "a < b && c --> d"),
        record(2, "Ann", 3, 4, "first line\n\n\nsecond line\r\n"),
    ]
    text = to_webvtt(MEETING, captions)
    blocks = text.rstrip("\n").split("\n\n")
    assert len(blocks) == 4, "a blank line inside a caption would end its cue"
    assert blocks[2].splitlines()[2] == "<v &lt;Bob&gt; &amp; Co Ltd>a &lt; b &amp;&amp; c --&gt; d"
    assert blocks[3].splitlines()[2:] == ["<v Ann>first line", "second line"]
    assert sum("-->" in line for line in text.splitlines()) == 2, "only timing lines have -->"


def test_webvtt_times_start_at_zero_end_after_they_start_and_pass_a_hundred_hours() -> None:
    captions = [
        record(1, "Ann", -3, -1, "said while the meeting was starting"),
        record(2, "Ann", 10, 10, "no duration"),
        record(3, "Ann", 360_000, 360_001.5, "much later"),
    ]
    timings = [cue.splitlines()[1] for cue in to_webvtt(MEETING, captions).split("\n\n")[2:]]
    assert timings == [
        "00:00:00.000 --> 00:00:00.001",
        "00:00:10.000 --> 00:00:10.001",
        "100:00:00.000 --> 100:00:01.500",
    ]
    assert timestamp(3723.4567) == "01:02:03.457"


def test_webvtt_leaves_out_captions_with_no_words_and_numbers_cues_without_gaps() -> None:
    captions = [record(1, "Ann", 1, 2, "one"), record(2, "Ann", 2, 3, " \n "),
                record(3, "Ann", 3, 4, "three")]
    cues = to_webvtt(MEETING, captions).split("\n\n")[2:]
    assert [cue.splitlines()[0] for cue in cues] == ["1", "2"]
    assert to_webvtt(MEETING, []).startswith("WEBVTT\n\nNOTE\n")


# -- JSON --------------------------------------------------------------------------------


def test_json_keeps_everything_stored_with_unix_times() -> None:
    caption = record(1, "Борис", 1.25, 2.5, "Добрый день", "ru", {"en": "Good afternoon"})
    data = json.loads(to_json(MEETING, [caption]))
    assert data == to_dict(MEETING, [caption]) == {
        "meeting": {"id": MEETING.id, "room_id": MEETING.room_id, "started_at": T0,
                    "ended_at": T0 + 3600},
        "captions": [{"participant": "p1", "name": "Борис", "utterance": "u-1",
                      "start": T0 + 1.25, "end": T0 + 2.5, "language": "ru",
                      "text": "Добрый день", "translations": {"en": "Good afternoon"}}],
    }
    assert "Добрый" in to_json(MEETING, [caption]), "UTF-8, not escapes"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(BadRequest, match="unknown transcript format: 'srt'"):
        write("srt", MEETING, [])


# -- from the store: the command line and HTTP ------------------------------------------


async def _meeting_with_captions(store: Store) -> MeetingRecord:
    room = await store.create_room("Transcribed")
    meeting = await store.start_meeting(room.id, T0)
    await store.add_caption(meeting.id, "p2", "Борис", "u-2", T0 + 5, T0 + 6, "ru", "Спасибо",
                            {"en": "Thank you"})
    await store.add_caption(meeting.id, "p1", "Ann", "u-1", T0 + 1, T0 + 2, "en", "Welcome", {})
    return meeting


@pytest.fixture(autouse=True)
def no_townhall_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TOWNHALL_"):
            monkeypatch.delenv(key)


def test_the_transcript_command_prints_webvtt_or_json_or_writes_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    store = Store.open(Config(data_dir=data_dir).database)
    try:
        meeting = asyncio.run(_meeting_with_captions(store))
        captions = asyncio.run(store.captions(meeting.id))
    finally:
        store.close()
    base = ["--data-dir", str(data_dir), "transcript", meeting.id]

    assert main(base) == 0
    assert capsys.readouterr().out == to_webvtt(meeting, captions)
    assert main([*base, "--format", "vtt", "--language", "en"]) == 0
    assert "<v Борис>Thank you" in capsys.readouterr().out
    assert main([*base, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == to_dict(meeting, captions)
    output = tmp_path / "minutes" / "meeting.vtt"
    output.parent.mkdir()
    assert main([*base, "--output", str(output)]) == 0
    assert capsys.readouterr().out == ""
    assert output.read_text(encoding="utf-8") == to_webvtt(meeting, captions)

    assert main(["--data-dir", str(data_dir), "transcript", "f" * 32]) == 2
    assert capsys.readouterr().err == "townhall: unknown meeting\n"
    assert main([*base, "--language", "english"]) == 2
    assert "ISO 639-1" in capsys.readouterr().err
    assert main([*base, "--format", "srt"]) == 2


async def test_the_transcript_endpoint_answers_webvtt_and_json_to_an_admin_or_host(
    server: RunningServer,
) -> None:
    store = server.running.services.store
    meeting = await _meeting_with_captions(store)
    captions = await store.captions(meeting.id)
    url = f"{server.base_url}/api/meetings/{meeting.id}/transcript"
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    host = {"Authorization": f"Bearer {server.token(meeting.room_id, 'host')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"format": "vtt"}, headers=admin) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/vtt; charset=utf-8"
            assert await response.text() == to_webvtt(meeting, captions)
        async with http.get(url, params={"format": "vtt", "language": "en"},
                            headers=host) as response:
            assert "<v Борис>Thank you" in await response.text()
        async with http.get(url, headers=admin) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            assert await response.json() == to_dict(meeting, captions)

        speaker = {"Authorization": f"Bearer {server.token(meeting.room_id, 'speaker')}"}
        other_host = {"Authorization": f"Bearer {server.token('x' * 32, 'host')}"}
        for headers, params, status, code in [
            ({}, {}, 401, "unauthorized"),
            (speaker, {}, 403, "forbidden"),
            (other_host, {}, 403, "forbidden"),
            (admin, {"format": "srt"}, 400, "bad-request"),
            (admin, {"format": "vtt", "language": "english"}, 400, "bad-request"),
        ]:
            async with http.get(url, params=params, headers=headers) as response:
                assert response.status == status, (headers, params)
                assert (await response.json())["error"]["code"] == code
        missing = f"{server.base_url}/api/meetings/{'f' * 32}/transcript"
        async with http.get(missing, headers=admin) as response:
            assert response.status == 404
