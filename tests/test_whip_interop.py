"""Interoperability: Debian's simple-whip-client (GStreamer webrtcbin) publishes into a meeting."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import Attendee, RunningServer

pytestmark = pytest.mark.interop

WHIP_CLIENT = os.environ.get("TOWNHALL_WHIP_CLIENT", "/usr/bin/whip-client")

VIDEO = ("videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1"
         " ! videoconvert ! queue ! vp8enc deadline=1 ! rtpvp8pay pt=96 ! queue"
         " ! application/x-rtp,media=video,encoding-name=VP8,payload=96")
AUDIO = ("audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! queue"
         " ! opusenc ! rtpopuspay pt=111 ! queue"
         " ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111")


def _require_whip_client() -> None:
    if shutil.which(WHIP_CLIENT) is None:
        reason = f"whip-client not found at {WHIP_CLIENT} (apt-get install simple-whip-client)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


#: Debian bookworm's whip-client links libsoup2, while libnice (under webrtcbin) pulls in
#: libgupnp-igd and with it libsoup3; libsoup aborts a process holding both ("libsoup2 symbols
#: detected"). This stand-in for libgupnp-igd (no UPnP port mappings, which loopback does not
#: need) keeps libsoup3 out of whip-client.
IGD_STUB = r"""
typedef unsigned long GType;
extern GType g_object_get_type(void);
extern void *g_object_new(GType type, const char *first_property_name, ...);
GType gupnp_simple_igd_get_type(void) { return g_object_get_type(); }
void *gupnp_simple_igd_thread_new(void) { return g_object_new(g_object_get_type(), (void *)0); }
void gupnp_simple_igd_add_port(void *igd, const char *protocol, unsigned external_port,
    const char *local_ip, unsigned local_port, unsigned lease, const char *description) {}
void gupnp_simple_igd_remove_port_local(void *igd, const char *protocol, const char *local_ip,
    unsigned local_port) {}
"""


def _libraries(path: str) -> str:
    result = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    return result.stdout


def _igd_library() -> str | None:
    result = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.strip().startswith("libgupnp-igd-1.0.so.4 ") and "=>" in line:
            return line.split("=>", 1)[1].strip()
    return None


def _whip_client_environment(workdir: Path) -> dict[str, str]:
    """The environment to run whip-client in, with the libgupnp-igd stand-in where needed."""
    environment = dict(os.environ)
    igd = _igd_library()
    if igd is None or "libsoup-2.4" not in _libraries(WHIP_CLIENT) \
            or "libsoup-3" not in _libraries(igd):
        return environment
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        reason = "whip-client needs a libgupnp-igd stand-in (libsoup2/3 clash) and no C compiler"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    source = workdir / "igd.c"
    source.write_text(IGD_STUB)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(workdir / "libgupnp-igd-1.0.so.4"),
                    str(source), "-l:libgobject-2.0.so.0"], check=True)
    environment["LD_LIBRARY_PATH"] = ":".join(
        filter(None, [str(workdir), environment.get("LD_LIBRARY_PATH")]))
    return environment


async def _stop(process: asyncio.subprocess.Process) -> bytes:
    """SIGINT (whip-client then DELETEs its resource), SIGKILL if it lingers; its output."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.stdout is not None
    return await process.stdout.read()


async def _whip_client(server: RunningServer, room: str, token: str, workdir: Path,
                      trickle: bool = True) -> asyncio.subprocess.Process:
    args = ["-u", f"{server.base_url}/whip/{room}?name=GStreamer", "-t", token,
            "-V", VIDEO, "-A", AUDIO, "-l", "4", "-o"]
    if not trickle:
        args.append("-n")
    return await asyncio.create_subprocess_exec(
        WHIP_CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=_whip_client_environment(workdir))


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("trickle", [False, True], ids=["candidates-in-offer", "trickle"])
async def test_gstreamer_whip_client_publishes_a_test_pattern_that_an_attendee_decodes(
    server: RunningServer, trickle: bool, tmp_path: Path,
) -> None:
    _require_whip_client()
    room = await server.create_room("gstreamer")
    attendee = Attendee(server.ws_url, server.token(room, "host"), "watcher")
    await attendee.join()
    token = server.token(room, "speaker")
    process = await _whip_client(server, room, token, tmp_path, trickle)
    try:
        try:
            joined = await attendee.wait_for(
                "participant-joined", where=lambda m: m["participant"]["name"] == "GStreamer")
            gstreamer = joined["participant"]["id"]
            await attendee.wait_frames((gstreamer, "camera"), 30, timeout=12)
            await attendee.wait_frames((gstreamer, "microphone"), 25, timeout=5)
            assert attendee.frame_sizes[(gstreamer, "camera")] == (320, 240)
        except (AssertionError, TimeoutError):
            output = await _stop(process)
            print(output.decode(errors="replace").replace(token, "<token>")[-4000:])
            raise
        await _stop(process)
        # whip-client DELETEs its resource when interrupted.
        await attendee.wait_for("participant-left", timeout=5,
                                where=lambda m: m["participant"] == gstreamer)
    finally:
        await _kill(process)
        await attendee.close()


def _browser_fixtures() -> dict[str, Any]:
    """The Chromium fixtures of ``tests/browser/conftest.py``, under a module name of their own."""
    path = Path(__file__).parent / "browser" / "conftest.py"
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location("townhall_whip_browser_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = ("chromium_extra_args", "chromium_endpoint", "browser", "new_page")
    return {name: getattr(module, name) for name in names if hasattr(module, name)}


_BROWSER_FIXTURES = _browser_fixtures()
if "new_page" in _BROWSER_FIXTURES:
    globals().update(_BROWSER_FIXTURES)
else:

    @pytest.fixture
    def new_page() -> Any:
        reason = "tests/browser/conftest.py has no Chromium fixtures"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.mark.browser
async def test_gstreamer_whip_client_video_plays_on_a_meeting_page_in_chromium(
    server: RunningServer, tmp_path: Path, new_page: Any,
) -> None:
    _require_whip_client()
    room = await server.create_room("gstreamer in chromium")
    page = await new_page()
    await page.goto(await server.invite(room, "listener"))
    await page.fill("#name", "Viewer")
    await page.click("#join")
    await page.wait_for_function(
        "window.townhall && window.townhall.status === 'connected' && window.townhall.self")
    token = server.token(room, "speaker")
    process = await _whip_client(server, room, token, tmp_path)
    try:
        selector = 'video[data-remote][data-source="camera"]'
        await page.wait_for_function(
            """(selector) => {
                const v = document.querySelector(selector);
                return v && v.videoWidth === 320 && v.readyState >= 2;
            }""", arg=selector, timeout=12_000)
        before = await page.eval_on_selector(selector, "v => v.currentTime")
        await page.wait_for_timeout(1000)
        after = await page.eval_on_selector(selector, "v => v.currentTime")
        assert after > before + 0.3, f"GStreamer's video is stuck at {before} -> {after}"
        figure = await page.eval_on_selector(selector, "v => v.dataset.participant")
        assert await page.text_content(
            f'figure[data-participant="{figure}"] figcaption') == "GStreamer"
    finally:
        await _stop(process)
        await _kill(process)
