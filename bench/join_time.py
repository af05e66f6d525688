"""Join time: from pressing Join to the first remote video frame, Chromium on loopback.

    python bench/join_time.py --joins 20

Starts ``townhall serve`` on loopback with a fresh data directory, one Chromium page that
publishes its fake camera, then joins a second page ``--joins`` times (a new browser context each
time) and measures, inside the page, from the click on **Join** to the first decoded frame of the
publisher's video (``requestVideoFrameCallback``, falling back to ``videoWidth > 0``). Prints p50
and p95 and writes JSON to ``bench/out/join_time.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

CHROMIUM = os.environ.get("TOWNHALL_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
]

MEASURE = """async (publisher) => {
    const start = performance.now();
    document.querySelector('#join').click();
    const selector = `video[data-remote][data-participant="${publisher}"][data-source="camera"]`;
    return await new Promise((resolve, reject) => {
        const give_up = setTimeout(() => reject(new Error('no video within 20 s')), 20000);
        const done = () => { clearTimeout(give_up); resolve(performance.now() - start); };
        const poll = () => {
            const video = document.querySelector(selector);
            if (video && video.videoWidth > 0) return done();
            if (video && 'requestVideoFrameCallback' in video && !video.dataset.benchWaiting) {
                video.dataset.benchWaiting = '1';
                video.requestVideoFrameCallback(() => done());
            }
            setTimeout(poll, 5);
        };
        poll();
    });
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def townhall(data: Path, *args: str) -> str:
    env = {**os.environ, "TOWNHALL_DATA_DIR": str(data)}
    out = subprocess.run(
        [sys.executable, "-m", "townhall", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


async def run(joins: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="townhall-bench-"))
    port, media = free_port(), free_port()
    env = {
        **os.environ,
        "TOWNHALL_DATA_DIR": str(data),
        "TOWNHALL_HTTP_PORT": str(port),
        "TOWNHALL_MEDIA_UDP_PORT": str(media),
        "TOWNHALL_MEDIA_TCP_PORT": str(media),
        "TOWNHALL_MEDIA_ADDRESSES": "127.0.0.1",
        "TOWNHALL_LOG_LEVEL": "WARNING",
    }
    room = townhall(data, "room", "create", "bench").split()[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "townhall", "serve", "--no-captions"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "townhall is running at ..."
        base = f"http://localhost:{port}"

        def link(role: str) -> str:
            url = townhall(data, "invite", room, "--role", role)
            return base + url[url.index("/r/") :]

        samples: list[float] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            publisher_context = await browser.new_context()
            publisher = await publisher_context.new_page()
            await publisher.goto(link("speaker"))
            await publisher.fill("#name", "publisher")
            await publisher.click("#join")
            await publisher.wait_for_function(
                "window.townhall && window.townhall.self && window.townhall.status === 'connected'"
            )
            publisher_id = await publisher.evaluate("window.townhall.self.id")
            await asyncio.sleep(2)
            for n in range(joins):
                context = await browser.new_context()
                page = await context.new_page()
                await page.goto(link("listener"))
                await page.fill("#name", f"viewer {n}")
                samples.append(await page.evaluate(MEASURE, publisher_id))
                print(f"join {n + 1}: {samples[-1]:.0f} ms", flush=True)
                await context.close()
                await asyncio.sleep(0.5)
            await browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)
    ordered = sorted(samples)
    return {
        "joins": joins,
        "p50_ms": round(statistics.median(ordered)),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max_ms": round(ordered[-1]),
        "samples_ms": [round(s) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(run(args.joins))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "join_time.json").write_text(json.dumps(result, indent=2))
    print(
        f"join to first remote video frame over {result['joins']} joins: "
        f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms"
    )


if __name__ == "__main__":
    time.sleep(0)
    main()
