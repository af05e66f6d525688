"""Captions in real Chromium pages: the host's switch, the indicator and notice everyone sees, and
captions in each page's live region in the language it chose. A test participant with a
caption-role token sends the ``caption`` messages the captions worker would send."""

from __future__ import annotations

from typing import Any

import pytest

from support import Attendee

pytestmark = pytest.mark.browser

T = 1_800_000_000.0


async def join(page: Any, url: str, name: str) -> str:
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#join")
    await page.wait_for_function(
        "window.townhall && window.townhall.status === 'connected' && window.townhall.self"
    )
    return str(await page.evaluate("window.townhall.self.id"))


def caption(speaker: str, final: bool, text: str, translation: str) -> dict[str, Any]:
    return {"type": "caption", "participant": speaker, "utterance": "w-1", "final": final,
            "language": "ru", "text": text, "start": T, "end": T + 2,
            "translations": {"uk": translation}}


async def test_a_host_turns_captions_on_and_another_page_reads_them_in_its_language(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("captions page")
    host, listener = await new_page(), await new_page()
    host_id = await join(host, await server.invite(room, "host"), "Ганна")
    await join(listener, await server.invite(room, "listener"), "Listener")

    assert await listener.is_hidden("#captions-indicator")
    assert await listener.is_hidden("#captions-toggle"), "only a host has the switch"
    await listener.select_option("#caption-language", "uk")
    await host.click("#captions-toggle")

    await listener.locator("#captions-indicator").wait_for(state="visible")
    assert (await listener.text_content("#captions-indicator") or "").strip().endswith(
        "Captions on")
    notice = listener.locator("#captions-notice")
    await notice.wait_for(state="visible")
    assert "Your speech in this meeting is being transcribed" in (
        await notice.text_content() or "")
    assert await host.get_attribute("#captions-toggle", "aria-pressed") == "true"
    assert await host.text_content("#captions-toggle") == "Turn captions off"

    worker = Attendee(server.ws_url, server.token(room, "caption"), "Captions")
    await worker.join()
    try:
        await worker.wait_for("caption-languages", where=lambda m: m["languages"] == ["uk"])
        await worker.send(caption(host_id, False, "Добрый", "Добрий"))
        line = listener.locator('#caption-log .caption-line[data-utterance="w-1"]')
        await line.locator(".caption-text", has_text="Добрий").wait_for()
        assert await line.get_attribute("data-final") == "false"
        await worker.send(caption(host_id, True, "Добрый день, друзья", "Добрий день, друзі"))
        await listener.locator('#caption-log .caption-line[data-final="true"]').wait_for()

        assert await listener.locator("#caption-log .caption-line").count() == 1, \
            "the final replaces the partial in place"
        assert await line.locator(".caption-name").text_content() == "Ганна"
        text = line.locator(".caption-text")
        assert await text.text_content() == "Добрий день, друзі"
        assert await text.get_attribute("lang") == "uk"
        assert await listener.get_attribute("#caption-log", "aria-live") == "polite"

        # The host chose nothing: the same caption as it was spoken.
        spoken = host.locator('#caption-log .caption-line[data-final="true"] .caption-text')
        await spoken.wait_for()
        assert (await spoken.text_content(), await spoken.get_attribute("lang")) == (
            "Добрый день, друзья", "ru")

        assert await listener.locator(f'figure[data-participant="{worker.id}"]').count() == 0, \
            "the captions worker gets no video tile"
        # Old lines go as new ones come: the newest six stay.
        for n in range(2, 10):
            message = caption(host_id, True, f"фраза {n}", f"фраза {n}")
            await worker.send({**message, "utterance": f"w-{n}"})
        await listener.locator('.caption-line[data-utterance="w-9"]').wait_for()
        shown = await listener.eval_on_selector_all(
            "#caption-log .caption-line", "lines => lines.map(l => l.dataset.utterance)")
        assert shown == [f"w-{n}" for n in range(4, 10)]
        await listener.click("#captions-notice-dismiss")
        assert await listener.is_hidden("#captions-notice")
        assert await listener.is_visible("#captions-indicator")
    finally:
        await worker.close()


async def test_a_page_joining_a_room_with_captions_on_is_told_before_it_speaks(
    server: Any, new_page: Any
) -> None:
    room = await server.create_room("already captioned")
    await server.running.services.store.set_captions(room, True)
    page = await new_page()
    await join(page, await server.invite(room, "speaker"), "Speaker")
    await page.locator("#captions-notice").wait_for(state="visible")
    await page.locator("#captions-indicator").wait_for(state="visible")
    assert await page.locator("#captions-notice").get_attribute("role") == "alert"
    assert await page.locator('label[for="caption-language"]').text_content() == (
        "Caption language")
    options = await page.eval_on_selector_all(
        "#caption-language option", "options => options.map(o => o.value)")
    assert options[:4] == ["", "en", "ru", "uk"]


READ_VTT = """async ([url, token]) => {
    const response = await fetch(url, {headers: {Authorization: `Bearer ${token}`}});
    const blob = await response.blob();
    const video = document.createElement('video');
    const track = document.createElement('track');
    track.kind = 'captions';
    track.src = URL.createObjectURL(blob);
    track.default = true;
    video.append(track);
    document.body.append(video);
    track.track.mode = 'hidden';
    await new Promise((resolve, reject) => {
        track.addEventListener('load', resolve);
        track.addEventListener('error', () => reject(new Error('the track did not load')));
    });
    return [...track.track.cues].map((cue) => {
        const html = cue.getCueAsHTML();
        const voice = html.firstChild;
        return {start: cue.startTime, end: cue.endTime, text: html.textContent,
                voice: voice && voice.title !== undefined ? voice.title : null};
    });
}"""


async def test_chromium_reads_the_webvtt_transcript_with_its_speakers_times_and_text(
    server: Any, new_page: Any
) -> None:
    store = server.running.services.store
    room = await store.create_room("transcript")
    meeting = await store.start_meeting(room.id, T)
    await store.add_caption(meeting.id, "p1", "<Bob> & Co", "u-1", T + 1.5, T + 3.25,
                            "en", "a < b && c --> d", {})
    await store.add_caption(meeting.id, "p2", "Ганна", "u-2", T + 3725, T + 3727.5,
                            "ru", "Добрый день\n\nдрузья", {"en": "Good afternoon, friends"})
    page = await new_page()
    await page.goto(f"{server.base_url}/static/room.html")
    url = f"/api/meetings/{meeting.id}/transcript?format=vtt"
    cues = await page.evaluate(READ_VTT, [url, server.admin_token])
    assert cues == [
        {"start": 1.5, "end": 3.25, "text": "a < b && c --> d", "voice": "<Bob> & Co"},
        {"start": 3725, "end": 3727.5, "text": "Добрый день\nдрузья", "voice": "Ганна"},
    ]
    english = await page.evaluate(READ_VTT, [f"{url}&language=en", server.admin_token])
    assert english[1]["text"] == "Good afternoon, friends"


async def test_the_admin_page_switches_a_rooms_captions(server: Any, new_page: Any) -> None:
    room = await server.create_room("switched")
    page = await new_page()
    await page.goto(server.admin_url)
    switch = page.locator(f'#rooms li.room[data-room="{room}"] button[data-action="captions"]')
    await switch.wait_for()
    assert (await switch.text_content(), await switch.get_attribute("aria-pressed")) == (
        "Captions off", "false")
    await switch.click()
    await page.wait_for_function(
        "(s) => document.querySelector(s).getAttribute('aria-pressed') === 'true'",
        arg=f'li.room[data-room="{room}"] button[data-action="captions"]')
    assert await switch.text_content() == "Captions on"
    assert (await server.running.services.store.get_room(room)).captions is True
