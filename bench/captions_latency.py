"""Caption latency: from the end of an utterance to its final caption at a listener.

    python bench/captions_latency.py --speakers 1,2,3 --rounds 2

Starts ``townhall serve`` (its own captions worker off) and ``townhall captions`` as two processes
on loopback with a fresh data directory, the Whisper model from ``../shared/models/whisper-base``
(or ``--asr-model``). In this process: a listener and, per step, N speakers (aiortc participants)
that play the speech fixtures of ``tests/fixtures/speech`` in real time, one after another with a
``--gap`` of silence; N speakers talk at the same time, each in its own order. The clip timing is
known from the playback (``SpeechTrack``), the caption timing from the listener's arrival clock,
and captions are matched to clips through the stored transcript (each final's start and end).

For every clip: **final latency** = arrival of the last final caption overlapping the clip − the
clip's end; **first partial** = arrival of the first caption (partial or final) overlapping the
clip − the clip's start; word error rate of the clip's finals against the fixture text. Per step:
p50/p90 of both, clips without a final, the worker's CPU (utime+stime from ``/proc``) per second
of speech, and whether it kept up (final p90 ≤ 2.0 s). Prints a table and writes JSON to
``bench/out/captions_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

from support import Attendee, SpeechTrack, Spoken, word_error_rate  # noqa: E402
from townhall.auth import tokens  # noqa: E402
from townhall.auth.secret import secret_for  # noqa: E402
from townhall.config import Config  # noqa: E402
from townhall.store import Store  # noqa: E402

SPEECH = REPO / "tests" / "fixtures" / "speech"
OUT = REPO / "bench" / "out"
TARGET_FINAL_P90 = 2.0
TARGET_FIRST_PARTIAL = 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Clip:
    speaker: str
    name: str
    spoken: Spoken
    text: str
    final_latency: float | None = None
    first_partial: float | None = None
    wer: float | None = None
    utterances: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = Path(tempfile.mkdtemp(prefix="townhall-bench-captions-"))
        self.port = free_port()
        self.config = Config(data_dir=self.data, http_port=self.port)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "TOWNHALL_DATA_DIR": str(self.data),
            "TOWNHALL_HTTP_PORT": str(self.port),
            "TOWNHALL_MEDIA_ADDRESSES": "127.0.0.1",
            "TOWNHALL_MEDIA_UDP_PORT": "0",
            "TOWNHALL_MEDIA_TCP_PORT": "0",
            "TOWNHALL_CAPTIONS_WORKER": "false",
            "TOWNHALL_LOG_LEVEL": "WARNING",
        }
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.secret = b""
        self.texts: dict[str, dict[str, str]] = json.loads(
            (SPEECH / "texts.json").read_text("utf-8"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, room: str, role: str) -> str:
        return tokens.sign(self.secret, room, role, 3600, time.time())

    async def start(self) -> None:
        self.secret = secret_for(self.config)
        log = open(self.data / "server.log", "wb")  # noqa: SIM115
        self.server = subprocess.Popen([sys.executable, "-m", "townhall", "serve"],
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "townhall is running" not in (self.data / "server.log").read_text():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start: "
                                   + (self.data / "server.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        worker_log = open(self.data / "worker.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "townhall", "captions", "--server", self.base_url,
                   "--token", self.token("*", "caption"), "--asr-model", self.args.asr_model]
        if self.args.threads:
            command += ["--threads", str(self.args.threads)]
        self.worker = subprocess.Popen(command, env=self.env, stdout=worker_log,
                                       stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    async def room(self, name: str) -> str:
        store = Store.open(self.config.database)
        try:
            room = await store.create_room(name)
            await store.set_captions(room.id, True)
            return room.id
        finally:
            store.close()

    async def step(self, speakers: int) -> dict[str, Any]:
        room = await self.room(f"bench-{speakers}")
        ws_url = self.base_url.replace("http", "ws", 1) + "/ws"
        listener = Attendee(ws_url, self.token(room, "listener"), "listener")
        await listener.join()
        if self.args.language:
            await listener.send({"type": "caption-language", "language": self.args.language})
        voices = [SpeechTrack() for _ in range(speakers)]
        people = [Attendee(ws_url, self.token(room, "speaker"), f"speaker {n}")
                  for n in range(speakers)]
        for person, voice in zip(people, voices, strict=True):
            await person.join()
            await person.publish(video=False, audio_track=voice)
        await listener.wait_for("participant-joined", timeout=60,
                                where=lambda m: m["participant"]["role"] == "caption")
        await asyncio.sleep(3.0)  # the worker's subscribe transport comes up
        assert self.worker is not None
        cpu_before, started = cpu_seconds(self.worker.pid), time.monotonic()
        names = sorted(p.name for p in SPEECH.glob("*.wav"))
        clips: list[Clip] = []
        rounds = self.args.rounds if speakers == 1 else 1
        for n, (person, voice) in enumerate(zip(people, voices, strict=True)):
            order = names[n * 5 % len(names):] + names[:n * 5 % len(names)]
            first_pause = 0.7 * n
            for r in range(rounds):
                for i, name in enumerate(order):
                    pause = first_pause if (r, i) == (0, 0) else self.args.gap
                    spoken = voice.say(SPEECH / name, pause=pause)
                    clips.append(Clip(person.id, name, spoken, self.texts[name]["text"]))
        await asyncio.gather(*(v.finished.wait() for v in voices))
        await asyncio.sleep(self.args.drain)
        arrivals = [(at, m) for at, m in zip(listener.received_at, listener.messages, strict=True)
                    if m["type"] == "caption"]
        cpu = cpu_seconds(self.worker.pid) - cpu_before
        wall = time.monotonic() - started
        meeting = listener.joined["meeting"]["id"]
        for person in people:
            await person.close()
        await listener.close()
        store = Store.open(self.config.database)
        try:
            stored = await store.captions(meeting)
        finally:
            store.close()
        return self.measure(speakers, clips, arrivals, stored, cpu, wall)

    def measure(self, speakers: int, clips: list[Clip],
                arrivals: list[tuple[float, dict[str, Any]]], stored: list[Any],
                cpu: float, wall: float) -> dict[str, Any]:
        spans = {(c.participant_id, c.utterance): (c.start, c.end, c.text) for c in stored}
        first_seen: dict[tuple[str, str], float] = {}
        final_seen: dict[tuple[str, str], float] = {}
        for at, message in arrivals:
            key = (message["participant"], message["utterance"])
            first_seen.setdefault(key, at)
            if message["final"]:
                final_seen[key] = at
        for clip in clips:
            assert clip.spoken.started is not None and clip.spoken.ended is not None
            overlapping = [
                key for key, (start, end, _) in spans.items()
                if key[0] == clip.speaker and start < clip.spoken.ended + 0.3
                and end > clip.spoken.started - 0.3
            ]
            clip.utterances = [key[1] for key in overlapping]
            finals = [final_seen[k] for k in overlapping if k in final_seen]
            firsts = [first_seen[k] for k in overlapping if k in first_seen]
            if finals:
                clip.final_latency = max(finals) - clip.spoken.ended
            if firsts:
                clip.first_partial = min(firsts) - clip.spoken.started
            heard = " ".join(spans[k][2] for k in sorted(overlapping, key=lambda k: spans[k][0]))
            clip.wer = word_error_rate(clip.text, heard)
        latencies = [c.final_latency for c in clips if c.final_latency is not None]
        partials = [c.first_partial for c in clips if c.first_partial is not None]
        speech = sum(c.spoken.duration for c in clips)
        result = {
            "speakers": speakers,
            "clips": len(clips),
            "without_final": sum(1 for c in clips if c.final_latency is None),
            "final_p50": percentile(latencies, 50),
            "final_p90": percentile(latencies, 90),
            "final_max": max(latencies, default=float("nan")),
            "first_partial_p50": percentile(partials, 50),
            "first_partial_p90": percentile(partials, 90),
            "wer_mean": statistics.fmean([c.wer for c in clips if c.wer is not None]),
            "speech_seconds": speech,
            "worker_cpu_seconds": cpu,
            "worker_cpu_per_speech_second": cpu / speech if speech else float("nan"),
            "worker_cpu_percent": 100 * cpu / wall,
            "kept_up": bool(latencies) and percentile(latencies, 90) <= TARGET_FINAL_P90
            and all(c.final_latency is not None for c in clips),
            "per_clip": [
                {"speaker": c.speaker, "clip": c.name, "final_latency": c.final_latency,
                 "first_partial": c.first_partial, "wer": c.wer, "utterances": c.utterances}
                for c in clips
            ],
        }
        return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| speakers | clips | no final | final p50 | final p90 | first caption p50 | "
        "first caption p90 | WER | worker CPU-s per speech-s | kept up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['speakers']} | {r['clips']} | {r['without_final']} | {r['final_p50']:.2f} s "
            f"| {r['final_p90']:.2f} s | {r['first_partial_p50']:.2f} s "
            f"| {r['first_partial_p90']:.2f} s | {r['wer_mean']:.2f} "
            f"| {r['worker_cpu_per_speech_second']:.2f} | {'yes' if r['kept_up'] else 'no'} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    bench = Bench(args)
    results: list[dict[str, Any]] = []
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        await bench.start()
        for speakers in args.speakers:
            result = await bench.step(speakers)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    finally:
        bench.stop()
    load = Path("/proc/loadavg").read_text().split()[:3]
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        "load_before": load_before,
        "load_after": load,
        "asr_model": args.asr_model,
        "threads": args.threads,
        "language": args.language,
        "results": results,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "captions_latency.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"load average before: {' '.join(load_before)}, after: {' '.join(load)}; "
          f"logs in {bench.data}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="1,2,3",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="simultaneous speakers per step (default 1,2,3)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times the single speaker plays every fixture (default 2)")
    parser.add_argument("--gap", type=float, default=2.0, help="silence between clips, s")
    parser.add_argument("--drain", type=float, default=8.0,
                        help="seconds to wait for the last captions")
    parser.add_argument("--asr-model", default=os.environ.get("TOWNHALL_ASR_MODEL") or str(
        REPO.parent / "shared" / "models" / "whisper-base"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--language", default=None,
                        help="the listener's caption language (default: the original)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
