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
