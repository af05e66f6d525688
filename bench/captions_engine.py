"""Captions engine benchmark: real-time factor, time to the first partial and to the final,
simultaneous speakers, word error rate — the engine alone, no network (the worker's benchmark
measures caption latency end to end at a listener).

    python bench/captions_engine.py [--model PATH] [--speakers 1,2,3,4] [--rounds 2]

1. **Offline pass** (as fast as the CPU goes): every speech fixture, ``--rounds`` times, each
   followed by 1 s of silence, fed in 20 ms frames to one ``SpeakerPipeline`` polled every 100 ms
   of audio, once without translations and once with listeners wanting en, ru and uk. Real-time
   factor = seconds spent in ``poll`` / seconds of audio. Word error rate of the finals against
   texts.json.
2. **Real-time runs** for each speaker count N: N speakers, each playing the fixtures in real time
   (staggered starts, 1 s of silence between sentences, in a different order each), driven like
   the worker does: one thread gives each speaker a turn in round robin (feed what arrived, then
   ``poll``), at most every 100 ms per speaker. Per caption: time to the first partial = wall time
   the partial came out − the utterance's speech start; time to the final = wall time the final
   came out − the utterance's speech end. The machine keeps up with N speakers when the final's
   p90 stays under 2 s.

Prints Markdown tables and writes JSON to bench/results/ (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests" / "captions"))

from captions_support import word_error_rate  # noqa: E402

from townhall.captions.pipeline import Caption, Engine, SpeakerPipeline  # noqa: E402

RATE = 16000
FRAME = RATE // 50
SPEECH = REPO / "tests" / "fixtures" / "speech"
LANGUAGES = frozenset({"en", "ru", "uk"})


def load(name: str) -> npt.NDArray[np.float32]:
    with wave.open(str(SPEECH / name), "rb") as f:
        raw = f.readframes(f.getnframes())
    return (np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768).astype(np.float32)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Program:
    """A speaker's audio: fixtures separated by silence, and where each one starts."""

    audio: npt.NDArray[np.float32]
    spans: list[tuple[str, int, int]]  # fixture name, first sample, end sample


def program(names: list[str], gap: float = 1.0, lead: float = 0.5) -> Program:
    parts = [np.zeros(int(lead * RATE), np.float32)]
    spans = []
    position = len(parts[0])
    for name in names:
        clip = load(name)
        spans.append((name, position, position + len(clip)))
        parts += [clip, np.zeros(int(gap * RATE), np.float32)]
        position += len(clip) + int(gap * RATE)
    return Program(np.concatenate(parts), spans)


def offline(engine: Engine, texts: dict[str, dict[str, str]], rounds: int,
            languages: frozenset[str]) -> dict[str, object]:
    names = list(texts) * rounds
    prog = program(names)
    start = 1_700_000_000.0
    clock_now = [start]
    pipeline = SpeakerPipeline(engine, lambda: clock_now[0])
    spent = 0.0
    cpu_before = time.process_time()
    captions: list[Caption] = []
    for n, i in enumerate(range(0, len(prog.audio), FRAME)):
        pipeline.feed(prog.audio[i : i + FRAME], start + i / RATE)
        clock_now[0] = start + (i + FRAME) / RATE
        if n % 5 == 4:
            t = time.perf_counter()
            captions += pipeline.poll(languages)
            spent += time.perf_counter() - t
    t = time.perf_counter()
    captions += pipeline.finish(languages)
    spent += time.perf_counter() - t
    cpu = time.process_time() - cpu_before
    seconds = len(prog.audio) / RATE
    finals = [c for c in captions if c.final]
    pairs: dict[str, list[tuple[str, str]]] = {"en": [], "ru": []}
    for name, first, end in prog.spans:
        said = [c.text for c in finals
                if first / RATE - 0.5 <= c.start - start <= end / RATE + 0.5]
        pairs[texts[name]["language"]].append((texts[name]["text"], " ".join(said)))
    return {
        "languages": sorted(languages),
        "audio_seconds": round(seconds, 1),
        "speech_seconds": round(sum((e - f) / RATE for _, f, e in prog.spans), 1),
        "utterances": len(prog.spans),
        "finals": len(finals),
        "partials": sum(1 for c in captions if not c.final),
        "poll_seconds": round(spent, 2),
        "cpu_seconds": round(cpu, 2),
        "real_time_factor": round(spent / seconds, 3),
        "cpu_per_audio_second": round(cpu / seconds, 3),
        "wer_en": round(word_error_rate(pairs["en"]), 3),
        "wer_ru": round(word_error_rate(pairs["ru"]), 3),
    }


@dataclass
class Speaker:
    prog: Program
    offset: float  # seconds after the run's start when its audio begins
    pipeline: SpeakerPipeline
    sent: int = 0
    first_partial: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)
    ends: dict[str, float] = field(default_factory=dict)


def realtime(engine: Engine, texts: dict[str, dict[str, str]], count: int,
             languages: frozenset[str], sentences: int) -> dict[str, object]:
    names = list(texts)
    speakers = []
    for k in range(count):
        order = (names[k * 5 % len(names):] + names[: k * 5 % len(names)])[:sentences]
        speakers.append(Speaker(program(order), offset=0.7 * k, pipeline=SpeakerPipeline(engine)))
    begin = time.time()
    duration = max(s.offset + len(s.prog.audio) / RATE for s in speakers) + 2.0
    last_turn = [0.0] * count
    busy = 0.0
    cpu_before = time.process_time()
    load_before = os.getloadavg()
    while time.time() - begin < duration:
        idle = True
        for k, s in enumerate(speakers):
            now = time.time()
            if now - last_turn[k] < 0.1:
                continue
            idle = False
            last_turn[k] = now
            arrived = min(len(s.prog.audio), int((now - begin - s.offset) * RATE))
            arrived -= arrived % FRAME
            while s.sent < arrived:
                s.pipeline.feed(s.prog.audio[s.sent : s.sent + FRAME],
                                begin + s.offset + s.sent / RATE)
                s.sent += FRAME
            t = time.perf_counter()
            out = s.pipeline.poll(languages) if s.sent < len(s.prog.audio) else \
                s.pipeline.finish(languages)
            busy += time.perf_counter() - t
            done = time.time()
            for c in out:
                s.starts[c.utterance] = c.start
                if c.final:
                    s.final[c.utterance] = done
                    s.ends[c.utterance] = c.end
                else:
                    s.first_partial.setdefault(c.utterance, done)
        if idle:
            time.sleep(0.01)
    cpu = time.process_time() - cpu_before
    first = [s.first_partial[u] - s.starts[u] for s in speakers for u in s.first_partial]
    final = [s.final[u] - s.ends[u] for s in speakers for u in s.final if s.ends.get(u)]
    return {
        "speakers": count,
        "languages": sorted(languages),
        "utterances": sum(len(s.final) for s in speakers),
        "sentences": sum(len(s.prog.spans) for s in speakers),
        "wall_seconds": round(time.time() - begin, 1),
        "busy_fraction": round(busy / (time.time() - begin), 2),
        "cpu_cores": round(cpu / (time.time() - begin), 2),
        "first_partial_p50": round(percentile(first, 50), 2),
        "first_partial_p90": round(percentile(first, 90), 2),
        "final_p50": round(percentile(final, 50), 2),
        "final_p90": round(percentile(final, 90), 2),
        "final_max": round(max(final, default=float("nan")), 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = os.environ.get("TOWNHALL_ASR_MODEL") or str(
        REPO.parent / "shared/models/whisper-base")
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speakers", default="1,2,3,4")
    parser.add_argument("--sentences", type=int, default=16, help="per speaker, real-time runs")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" /
                        f"captions_engine-{time.strftime('%Y-%m-%d')}.json")
    args = parser.parse_args()
    texts = json.loads((SPEECH / "texts.json").read_text(encoding="utf-8"))

    print(f"load average at start: {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    engine = Engine.load(args.model, threads=args.threads)
    print(f"Engine.load: {time.perf_counter() - started:.1f} s", flush=True)
    results: dict[str, object] = {"model": args.model, "threads": args.threads,
                                  "cpus": os.cpu_count()}
    try:
        runs = [offline(engine, texts, args.rounds, frozenset()),
                offline(engine, texts, args.rounds, LANGUAGES)]
        results["offline"] = runs
        print("\n| translations | utterances | audio s (speech s) | poll s | real-time factor "
              "| CPU s per audio s | WER en | WER ru |\n|---|---|---|---|---|---|---|---|")
        for r in runs:
            print(f"| {', '.join(r['languages']) or 'none'} | {r['utterances']} "  # type: ignore[arg-type]
                  f"| {r['audio_seconds']} ({r['speech_seconds']}) | {r['poll_seconds']} "
                  f"| {r['real_time_factor']} | {r['cpu_per_audio_second']} "
                  f"| {r['wer_en']} | {r['wer_ru']} |", flush=True)
        live = []
        print("\n| speakers | translations | finals | first partial p50 / p90 | final p50 / p90 "
              "/ max | busy | load before → after |\n|---|---|---|---|---|---|---|")
        for count in (int(x) for x in args.speakers.split(",")):
            for languages in (frozenset(), LANGUAGES):
                r = realtime(engine, texts, count, languages, args.sentences)
                live.append(r)
                print(f"| {count} | {', '.join(r['languages']) or 'none'} "  # type: ignore[arg-type]
                      f"| {r['utterances']}/{r['sentences']} "
                      f"| {r['first_partial_p50']} / {r['first_partial_p90']} s "
                      f"| {r['final_p50']} / {r['final_p90']} / {r['final_max']} s "
                      f"| {r['busy_fraction']} | {r['load_before'][0]} → {r['load_after'][0]} |",
                      flush=True)
        results["realtime"] = live
    finally:
        engine.close()
    results["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
