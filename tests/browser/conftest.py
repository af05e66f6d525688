"""Browser end-to-end fixtures: one Debian Chromium per test module, driven by Playwright.

Chromium runs as a plain subprocess with a DevTools port and each test connects to it over CDP
from its own event loop. That keeps one browser per module (the expensive part) while leaving
every test, and the ``server`` fixture from ``tests/conftest.py``, in the default function-scoped
event loop. Each page gets its own browser context, so pages share nothing but the browser.
Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import CHROMIUM, CHROMIUM_ARGS, skip_or_fail

pytestmark = pytest.mark.browser


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        skip_or_fail("the playwright Python package is not installed")


@pytest.fixture(scope="module")
def chromium_extra_args() -> list[str]:
    """More Chromium flags for a module's browser; a test module overrides this fixture."""
    return []


@pytest.fixture(scope="module")
def chromium_endpoint(chromium_extra_args: list[str]) -> Iterator[str]:
    """A running headless Chromium with a fresh profile; yields its CDP endpoint URL."""
    _require_chromium()
    profile = tempfile.mkdtemp(prefix="townhall-chromium-")
    log = open(Path(profile) / "stderr.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_ARGS, *chromium_extra_args, f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    port_file = Path(profile) / "DevToolsActivePort"
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None:
                log.flush()
                raise RuntimeError(
                    f"Chromium exited with {process.returncode}: "
                    + (Path(profile) / "stderr.log").read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port within 30 s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def browser(chromium_endpoint: str) -> AsyncIterator[Any]:
    """The module's Chromium, connected from this test's event loop."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(chromium_endpoint)
        try:
            yield browser
        finally:
            for context in list(browser.contexts)[1:]:
                await context.close()
            await browser.close()


NewPage = Callable[[], Awaitable[Any]]


@pytest.fixture
async def new_page(browser: Any) -> AsyncIterator[NewPage]:
    """Makes pages, each in a context of its own; the console of each is kept for failures."""
    contexts: list[Any] = []

    async def make() -> Any:
        context = await browser.new_context(viewport={"width": 1000, "height": 700})
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        page.console_lines = []  # type: ignore[attr-defined]
        page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
        return page

    yield make
    # Shown by pytest only when the test fails.
    for number, context in enumerate(contexts):
        for page in context.pages:
            print(f"--- console of page {number} ({page.url})")
            print("\n".join(getattr(page, "console_lines", [])))
        await context.close()
