"""What an audio-only participant of a large meeting receives, in bit/s.

    python bench/audio_only.py --participants 20 --seconds 10

A meeting of ``--participants``: all but two are synthetic participants (``participants.py``:
each publishes Opus with the audio-level extension, and VP8 —
640x360, or with ``--simulcast`` three layers shown at 320x180 — and receives what the room sends
it); the other two are listeners that only receive: one in audio-only mode (``receive {video:
false}``) and one receiving video, for comparison. Every microphone is unmuted. Each listener
counts every datagram that reaches its socket (SRTP, SRTCP, STUN, DTLS) by its clear header,
without decrypting anything.

The Opus is speech (the English fixtures in ``tests/fixtures/speech``, one after another) encoded
once here as a browser does by default: mono, 32 kbit/s, VBR, 20 ms frames, ``voip``; no DTX
(pauses inside the speech are sent in full, so the figures err high).

Scenarios, each measured for ``--seconds`` after ``--settle``: nobody speaks; one participant
speaks; three speak at once. Bit rates are UDP payload bytes x 8 / s; "on the wire" adds 28 bytes
of IPv4 and UDP header per datagram. Run once with the server's default selection of the loudest
three microphones and once forwarding every microphone (``TOWNHALL_LOUDEST_AUDIO`` = the meeting
size), to show what the selection saves. Runs in a network namespace of its own (see
``sfu_forwarding.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fractions
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from participants import OUT_DIR, SyntheticConsumer, SyntheticProducer, load_clip  # noqa: E402
from sfu_forwarding import enter_own_network_namespace, machine  # noqa: E402
from townhall_target import DEFAULT_COMMAND, TownhallTarget  # noqa: E402

logger = logging.getLogger("audio_only")

IP_UDP_HEADER = 28
SPEECH = BENCH_DIR.parent / "tests" / "fixtures" / "speech"
OPUS_BITRATE = 32_000
SCENARIOS = (("nobody speaks", 0), ("one speaks", 1), ("three speak", 3))


def speech_opus() -> list[bytes]:
    """The speech fixtures as 20 ms Opus packets, mono at ``OPUS_BITRATE``."""
    import wave

    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = OPUS_BITRATE
    codec.time_base = fractions.Fraction(1, 48000)
    codec.options = {"application": "voip", "frame_duration": "20", "vbr": "on"}
    packets: list[bytes] = []
    pts = 0
    for path in sorted(SPEECH.glob("en-*.wav")):
        with wave.open(str(path), "rb") as f:
            samples = np.frombuffer(f.readframes(f.getnframes()), np.int16)
            rate = f.getframerate()
        positions = np.arange(0, len(samples) * 48000 // rate) * rate / 48000
        pcm = np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)
        for start in range(0, len(pcm) - 960 + 1, 960):
            frame = av.AudioFrame.from_ndarray(pcm[start:start + 960].reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, 48000)
            pts += 960
            packets.extend(bytes(p) for p in codec.encode(frame))
    if not packets:
        raise SystemExit(f"no speech fixtures in {SPEECH}")
    return packets


class Tally:
    """Datagrams and bytes reaching one consumer's socket, by what they carry."""

    def __init__(self, consumer: SyntheticConsumer) -> None:
        self.consumer = consumer
        self.datagrams: dict[str, int] = {}
        self.octets: dict[str, int] = {}

    def install(self) -> None:
        connection = self.consumer.pc.getTransceivers()[0].receiver.transport.transport._connection
        passed_on = connection.data_received

        def data_received(data: bytes, component: int) -> None:
            self._add(data)
            passed_on(data, component)

        connection.data_received = data_received

    def _add(self, data: bytes) -> None:
        if data and 127 < data[0] < 192 and len(data) >= 12:
            if 191 < data[1] < 224:
                what = "rtcp"
            else:
                ssrc = int.from_bytes(data[8:12], "big")
                what = self.consumer.kinds.get(ssrc, "rtp")
        elif data and data[0] < 4:
            what = "stun"
        else:
            what = "other"
        self.datagrams[what] = self.datagrams.get(what, 0) + 1
        self.octets[what] = self.octets.get(what, 0) + len(data)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.datagrams), dict(self.octets)


@dataclass
class Measure:
    config: str
    scenario: str
    listener: str
    seconds: float
    kbit_per_s: float = 0.0
    kbit_per_s_on_the_wire: float = 0.0
    datagrams_per_s: float = 0.0
    by_kind_kbit_per_s: dict[str, float] = field(default_factory=dict)
    video_packets: int = 0


class AudioOnlyTarget(TownhallTarget):
    async def connect_listener(self, consumer: SyntheticConsumer, video: bool) -> None:
        session = await self._join("listener", "audio-only" if not video else "listener",
                                   consumer)
        assert session.ws is not None
        if not video:
            await session.ws.send_str(json.dumps({"type": "receive", "video": False}))
        await asyncio.wait_for(session.answered.wait(), 60)
        await consumer.wait_connected()


def _delta(before: tuple[dict[str, int], dict[str, int]],
           after: tuple[dict[str, int], dict[str, int]]) -> tuple[dict[str, int], dict[str, int]]:
    datagrams = {k: v - before[0].get(k, 0) for k, v in after[0].items()}
    octets = {k: v - before[1].get(k, 0) for k, v in after[1].items()}
    return datagrams, octets


async def run_config(config: str, loudest: int | None, args: argparse.Namespace) -> list[Measure]:
    if loudest is None:
        os.environ.pop("TOWNHALL_LOUDEST_AUDIO", None)
    else:
        os.environ["TOWNHALL_LOUDEST_AUDIO"] = str(loudest)
    speech = speech_opus()
    clip = dataclasses.replace(load_clip(), audio=speech)
    logger.info("speech: %d frames, %.1f kbit/s of Opus payload", len(speech),
                sum(len(a) for a in speech) * 8 / (len(speech) * 0.02) / 1000)
    target = AudioOnlyTarget(name="townhall", command=DEFAULT_COMMAND,
                             tile=(320, 180) if args.simulcast else None,
                             log_file=Path(args.out) / "logs" / f"audio-only-{config}.log")
    people = [(SyntheticProducer(clip, simulcast=args.simulcast), SyntheticConsumer(raw=True))
              for _ in range(args.participants - 2)]
    audio_only, watcher = SyntheticConsumer(raw=True), SyntheticConsumer(raw=True)
    results: list[Measure] = []
    try:
        await target.start()
        await target.join_meeting(people)
        await target.connect_listener(audio_only, video=False)
        await target.connect_listener(watcher, video=True)
        tallies = {"audio-only": Tally(audio_only), "receiving video": Tally(watcher)}
        for tally in tallies.values():
            tally.install()
        for scenario, speakers in SCENARIOS:
            for n, (producer, _) in enumerate(people):
                producer.speaking = n < speakers
            await asyncio.sleep(args.settle)
            before = {name: t.snapshot() for name, t in tallies.items()}
            started = time.monotonic()
            await asyncio.sleep(args.seconds)
            elapsed = time.monotonic() - started
            for name, tally in tallies.items():
                datagrams, octets = _delta(before[name], tally.snapshot())
                total_octets, total_datagrams = sum(octets.values()), sum(datagrams.values())
                measure = Measure(
                    config, scenario, name, round(elapsed, 2),
                    kbit_per_s=round(total_octets * 8 / elapsed / 1000, 1),
                    kbit_per_s_on_the_wire=round(
                        (total_octets + IP_UDP_HEADER * total_datagrams) * 8 / elapsed / 1000, 1),
                    datagrams_per_s=round(total_datagrams / elapsed, 1),
                    by_kind_kbit_per_s={k: round(v * 8 / elapsed / 1000, 1)
                                        for k, v in sorted(octets.items())},
                    video_packets=datagrams.get("video", 0),
                )
                logger.info("%s", measure)
                results.append(measure)
    finally:
        await target.stop()
        for producer, consumer in people:
            await producer.close()
            await consumer.close()
        await audio_only.close()
        await watcher.close()
    return results


def markdown(results: list[Measure]) -> str:
    lines = ["| selection | scenario | listener | kbit/s (UDP payload) | kbit/s on the wire "
             "| datagrams/s | audio / video / RTCP kbit/s | video packets |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for m in results:
        kinds = m.by_kind_kbit_per_s
        split = " / ".join(f"{kinds.get(k, 0.0):.1f}" for k in ("audio", "video", "rtcp"))
        lines.append(f"| {m.config} | {m.scenario} | {m.listener} | {m.kbit_per_s:.1f} | "
                     f"**{m.kbit_per_s_on_the_wire:.1f}** | {m.datagrams_per_s:.0f} | {split} | "
                     f"{m.video_packets} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, path: Path) -> list[Measure]:
    results: list[Measure] = []
    for config, loudest in (("loudest 3", None), ("every microphone", args.participants)):
        results += await run_config(config, loudest, args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "command": " ".join(["python", "bench/audio_only.py", *sys.argv[1:]]),
            "machine": machine(),
            "load_average": os.getloadavg(),
            "results": [asdict(r) for r in results],
        }, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=20,
                        help="meeting size, the audio-only listener included")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per scenario")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after a scenario starts before measuring")
    parser.add_argument("--simulcast", action="store_true",
                        help="publish three layers and report 320x180 tiles (needs simulcast)")
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aioice", "aiortc", "aiohttp", "participants", "townhall_target"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enter_own_network_namespace()
    path = Path(args.out) / f"audio-only-{time.strftime('%Y%m%dT%H%M%S')}.json"
    runner: Any = asyncio.run
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        runner = uvloop.run
    results = runner(main_async(args, path))
    print(markdown(results))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
