"""The administrator's page."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = pytest.mark.browser


async def test_the_admin_page_creates_a_room_and_shows_invite_links(
    server: Any, new_page: Any
) -> None:
    page = await new_page()
    await page.goto(server.admin_url)
    await page.fill("#room-name", "Weekly assembly")
    await page.click("#create-room")

    room = page.locator("#rooms li.room", has_text="Weekly assembly")
    await room.wait_for()
    room_id = await room.get_attribute("data-room")
    assert room_id

    for role in ("host", "speaker", "listener"):
        await room.locator(f'button[data-role="{role}"]').click()
        link = room.locator(f'input.invite-url[data-role="{role}"]')
        await link.wait_for()
        url = urlsplit(await link.input_value())
        assert url.scheme in ("http", "https"), url
        assert url.path == f"/r/{room_id}", url
        assert parse_qs(url.query)["t"][0], url

    # The listener link opens the room page and joins as a listener. (The link's host is the
    # server's configured public address; the test reaches the same server at base_url.)
    listener = urlsplit(await room.locator('input.invite-url[data-role="listener"]').input_value())
    guest = await new_page()
    await guest.goto(f"{server.base_url}{listener.path}?{listener.query}")
    await guest.fill("#name", "Guest")
    await guest.click("#join")
    await guest.wait_for_function("window.townhall && window.townhall.status === 'connected'")
    assert await guest.evaluate("window.townhall.self.role") == "listener"
    assert await guest.evaluate("window.townhall.room.name") == "Weekly assembly"

    # A reload lists the room again from GET /api/rooms.
    await page.reload()
    await page.locator(f'#rooms li.room[data-room="{room_id}"]').wait_for()
