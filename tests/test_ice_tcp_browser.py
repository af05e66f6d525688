"""ICE-TCP with a real browser: Debian's Chromium reaches a TCP-only IceMux on loopback.

aioice cannot be the active TCP side, so Chromium is. It signals no TCP candidates of its own
(its active candidates are not put in the SDP); it opens a TCP connection to the server's
passive candidate on 127.0.0.1 and the server learns it as a peer-reflexive candidate. mDNS host
candidates are turned off so that Chromium sends nothing to a multicast address.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from townhall.sfu.ice import IceMux

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

SETUP = """() => {
  if (window.pc) pc.close();
  window.log = [];
  window.pc = new RTCPeerConnection({iceServers: []});
  pc.oniceconnectionstatechange = () => log.push('ice ' + pc.iceConnectionState);
  pc.onconnectionstatechange = () => log.push('pc ' + pc.connectionState);
  window.gathered = () => new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
  });
  window.watch = ch => {
    log.push('channel ' + ch.readyState);
    ch.addEventListener('open', () => log.push('channel open'));
    ch.addEventListener('close', () => log.push('channel close'));
    ch.addEventListener('error', e => log.push('channel error ' + e.error));
    ch.addEventListener('message', e => log.push('message ' + e.data));
    return ch;
  };
  window.timeout = ms => new Promise((_, reject) => setTimeout(async () => {
    const stats = [];
    (await pc.getStats()).forEach(s => {
      if (s.type === 'data-channel' || s.type === 'transport') stats.push(s);
    });
    log.push({sctp: pc.sctp && pc.sctp.state, stats});
    reject(new Error('timed out: ' + JSON.stringify(log)));
  }, ms));
}"""

BROWSER_OFFERS = """async () => {
  window.channel = Promise.resolve(watch(pc.createDataChannel('chat')));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered();
  return pc.localDescription.sdp;
}"""

BROWSER_ANSWERS = """async sdp => {
  window.channel = new Promise(resolve => pc.ondatachannel = e => resolve(watch(e.channel)));
  await pc.setRemoteDescription({type: 'offer', sdp});
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered();
  return pc.localDescription.sdp;
}"""

ROUND_TRIP = """async answer => {
  if (answer) await pc.setRemoteDescription({type: 'answer', sdp: answer});
  const deadline = timeout(15000);  // generous: the suite loads both cores
  const ch = await Promise.race([channel, deadline]);
  if (ch.readyState !== 'open') {
    await Promise.race([new Promise(resolve => ch.onopen = resolve), deadline]);
  }
  const reply = new Promise(resolve => ch.onmessage = e => resolve(e.data));
  ch.send('ping from chromium');
  log.push('sent, buffered ' + ch.bufferedAmount);
  const out = {reply: await Promise.race([reply, deadline])};
  const stats = await pc.getStats();
  stats.forEach(s => { if (s.type === 'transport') out.pairId = s.selectedCandidatePairId; });
  const pair = stats.get(out.pairId);
  out.local = stats.get(pair.localCandidateId);
  out.remote = stats.get(pair.remoteCandidateId);
  return out;
}"""


@pytest.fixture
async def mux() -> AsyncIterator[IceMux]:
    ice_mux = IceMux(["127.0.0.1"], udp_port=-1, tcp_port=0)
    await ice_mux.start()
    try:
        yield ice_mux
    finally:
        await ice_mux.close()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.evaluate(SETUP)
            yield page
        finally:
            await browser.close()


def echo(channel: RTCDataChannel) -> None:
    channel.on("message", lambda message: channel.send(f"echo: {message}"))


#: About once in a hundred runs, Chromium keeps the ping in its own data channel: the channel and
#: the SCTP association are open on both sides, and the channel's stats say "messagesSent": 0
#: with the 18 bytes still buffered; the message never left the browser. Such an attempt is made
#: once more on a fresh connection; any other failure, or that one twice, fails the test.
CHROMIUM_KEPT_THE_MESSAGE = '"messagesSent":0'


@pytest.mark.parametrize("offerer", ["browser", "server"])
async def test_chromium_reaches_a_tcp_only_server_and_data_round_trips(
    mux: IceMux, page: Any, offerer: str
) -> None:
    from playwright.async_api import Error as PlaywrightError

    try:
        result, server_sdp, streams = await _round_trip(mux, page, offerer)
    except PlaywrightError as exc:
        if CHROMIUM_KEPT_THE_MESSAGE not in str(exc):
            raise
        print(f"Chromium kept the message in its data channel; once more: {exc}")
        await page.evaluate(SETUP)
        result, server_sdp, streams = await _round_trip(mux, page, offerer)

    candidates = re.findall(r"a=candidate:.*", server_sdp)
    assert candidates and all(
        f" tcp 2124414975 127.0.0.1 {mux.tcp_port} typ host tcptype passive" in c
        for c in candidates
    ), candidates
    assert result["reply"] == "echo: ping from chromium"
    assert result["local"]["protocol"] == "tcp"
    assert result["local"]["tcpType"] == "active"
    assert result["remote"]["protocol"] == "tcp"
    assert result["remote"]["tcpType"] == "passive"
    assert (result["remote"]["address"], result["remote"]["port"]) == (
        "127.0.0.1",
        mux.tcp_port,
    )
    assert streams >= 1


async def _round_trip(mux: IceMux, page: Any, offerer: str) -> tuple[dict[str, Any], str, int]:
    """Connect a fresh server peer connection to the page's: the page's round-trip result, the
    server's local SDP, and the ICE-TCP streams open before the server's side closes."""
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mux.attach(server)
    try:
        if offerer == "browser":
            server.on("datachannel", echo)
            offer = await page.evaluate(BROWSER_OFFERS)
            await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await server.setLocalDescription(await server.createAnswer())
            result = await page.evaluate(ROUND_TRIP, server.localDescription.sdp)
        else:
            echo(server.createDataChannel("chat"))
            await server.setLocalDescription(await server.createOffer())
            answer = await page.evaluate(BROWSER_ANSWERS, server.localDescription.sdp)
            await server.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            result = await page.evaluate(ROUND_TRIP, None)

        return result, server.localDescription.sdp, mux.tcp_stream_count
    finally:
        await server.close()
