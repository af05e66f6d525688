"""A whole meeting on one server: CPU, memory, loss at the SFU and the delay it adds.

    python bench/meeting.py --participants 20 --seconds 30 --targets townhall,janus-1loop

N synthetic participants (``participants.py``) each publish Opus with the audio-level extension
and VP8 in three simulcast layers, and each receive the others. One of them speaks at a time (its
audio packets carry a loud level, the others' silence), the turn passing to the next every
``--turn`` seconds, so the active speaker, the last-N set and the layers in use keep changing.

- townhall: the room's last-N (6 by default) picks the videos each participant receives; every
  page reports its videos shown at ``--tile`` (default 320x180), so the SFU forwards the ``h``
  layer; consumers send a REMB of ``--remb`` bit/s every second. The server measures how long it
  holds each packet (``measure_forwarding_delay``).
- Janus (VideoRoom, no last-N): each participant subscribes to every other's audio and to the
  video of a fixed six others, at substream 1 (``h``): the same number of forwarded streams.

Consumers count SRTP datagrams by their clear header without decrypting them, so the client can
play a large meeting. Measured over ``--seconds`` after ``--warmup``:

- server CPU (all threads, /proc/PID/stat) and memory (VmRSS, VmHWM);
- packets the producers sent and the consumers received, packets per server CPU-second;
- loss: datagrams the kernel dropped at the server's sockets (``drops`` in /proc/net/udp for the
  server's socket inodes), gaps in the sequence numbers each consumer received (a packet the SFU
  numbered but that never arrived, or one it skipped), and drops at the client's own sockets;
- townhall only: SFU-added delay p50/p99 from the server's histogram (kernel receive timestamp
  of the datagram → the send call of each forwarded copy).
- where gaps come from: the namespace's UDP error counters (/proc/net/snmp) in the window and
  during the joins, the server's socket drops during the joins, the server's own counts (packets
  dropped as malformed, copies its native path could not send), the producers' failed sends, and
  each jump forward in a consumer's sequence numbers (when, which kind, how many numbers).

With several ``--participants`` sizes the report names the largest meeting that kept the server
under ``--cpu-limit`` (70 % of one core) with no loss at the SFU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from clip import LAYERS  # noqa: E402
from forwarding_delay import delay_buckets, histogram, percentile  # noqa: E402
from janus import JanusTarget, janus_target  # noqa: E402
from participants import OUT_DIR, Clip, SyntheticConsumer, SyntheticProducer, load_clip  # noqa: E402
from sfu_forwarding import (  # noqa: E402
    enter_own_network_namespace,
    machine,
    process_cpu_times,
    self_cpu_seconds,
    start_profile,
    udp_counters,
)
from townhall.sfu.ice import udp_drops  # noqa: E402
from townhall_target import DEFAULT_COMMAND, TownhallTarget  # noqa: E402
from window import note_window  # noqa: E402

logger = logging.getLogger("meeting")

People = list[tuple[SyntheticProducer, SyntheticConsumer]]


@dataclass
class MeetingResult:
    target: str
    participants: int
    seconds: float = 0.0
    server_cpu_percent: float = 0.0
    server_system_percent: float = 0.0
    server_rss_mb: float = 0.0
    server_peak_rss_mb: float = 0.0
    server_threads: int = 0
    sent_packets: int = 0
    delivered_packets: int = 0  # media only: the server's padding probes are left out
    packets_per_cpu_second: float = 0.0
    sfu_socket_drops: int = 0
    consumer_sequence_gaps: int = 0
    client_socket_drops: int = 0
    delay_p50_ms: float | None = None
    delay_p99_ms: float | None = None
    delay_samples: int = 0
    #: packets per delay bucket in the window: {upper bound in ms: count}
    delay_histogram: dict[str, int] = field(default_factory=dict)
    client_cpu_percent: float = 0.0
    load_average_1min: float = 0.0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    delivered_by_kind: dict[str, int] = field(default_factory=dict)
    #: Receiving connections the server lost and offered again (townhall), over the whole run.
    receiving_restarts: int = 0
    #: Where gaps come from. The namespace's UDP error counters (/proc/net/snmp: RcvbufErrors,
    #: SndbufErrors, NoPorts, InErrors), the server's own counts (townhall: packets it dropped
    #: as malformed or unroutable, copies its native path could not send), and every jump
    #: forward in a consumer's sequence numbers: sequence numbers skipped per kind, jumps, and
    #: how many of them came within a second of the speaker changing.
    udp_errors: dict[str, int] = field(default_factory=dict)
    #: The same from the server's start to the end of the warm-up (joins), outside the window.
    join_udp_errors: dict[str, int] = field(default_factory=dict)
    join_sfu_socket_drops: int = 0
    #: Times the server's event loop was held 100 ms or more (townhall's LoopWatch), their
    #: total and the longest, in ms: from the start to the end of the warm-up, and in the window.
    join_loop_stalls: int = 0
    join_loop_stalled_ms: float = 0.0
    join_longest_stall_ms: float = 0.0
    loop_stalls: int = 0
    loop_stalled_ms: float = 0.0
    #: When everyone has left (townhall): the loop's stalls in the ``LEAVE_WAIT`` after, their
    #: total in ms, and the server's memory at the end of it (MB).
    leave_loop_stalls: int = 0
    leave_loop_stalled_ms: float = 0.0
    rss_after_leave_mb: float = 0.0
    #: The server's collections of 20 ms or more (``server/pauses.py``, from its log) from
    #: everyone leaving until the server stopped, its shutdown included (a full collection
    #: often comes only then): their total and the longest, in ms.
    leave_collections_ms: float = 0.0
    leave_longest_collection_ms: float = 0.0
    server_packets_dropped: int = 0
    #: Packets the benchmark's producers numbered but could not send (no ICE pair, SRTP
    #: refused): a gap every consumer of that stream sees, made before the SFU.
    producer_send_errors: int = 0
    #: The same over the whole run (joins included), by reason.
    producer_failed_sends: dict[str, int] = field(default_factory=dict)
    server_copies_unsent: int = 0
    skipped_by_kind: dict[str, int] = field(default_factory=dict)
    jumps: int = 0
    jumps_after_turn: int = 0
    #: The first jumps: (seconds into the window, seconds since the turn changed, kind, skipped).
    jump_sample: list[tuple[float, float, str, int]] = field(default_factory=list)
    error: str | None = None

    @property
    def sfu_loss(self) -> int:
        return self.sfu_socket_drops + max(0, self.consumer_sequence_gaps
                                          - self.client_socket_drops)


# --------------------------------------------------------------------------------------------
# What the kernel and the server say
# --------------------------------------------------------------------------------------------


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def process_udp_drops(pid: int) -> dict[int, int]:
    """Datagrams the kernel dropped at each UDP socket of process ``pid`` (full receive
    queue), by socket inode."""
    return udp_drops(socket_inodes(pid)) or {}


def drops_between(before: dict[int, int], after: dict[int, int]) -> int:
    """Drops added between two readings, socket by socket: a socket closed in between takes
    its count with it (so a total could go down), one opened counts from zero."""
    return sum(max(0, n - before.get(inode, 0)) for inode, n in after.items())


UDP_ERRORS = ("RcvbufErrors", "SndbufErrors", "NoPorts", "InErrors")

_COUNTER = re.compile(r"^(townhall_packets_dropped_total|townhall_copies_unsent_total"
                      r"|townhall_loop_stalls_total|townhall_loop_stall_seconds_total"
                      r"|townhall_loop_longest_stall_seconds) ([\d.]+)$", re.M)


def server_counters(metrics: str) -> dict[str, float]:
    return {name: float(value) for name, value in _COUNTER.findall(metrics)}


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


# --------------------------------------------------------------------------------------------
# One meeting
# --------------------------------------------------------------------------------------------


def make_target(name: str, size: int, args: argparse.Namespace) -> Any:
    log_file = Path(args.out) / "logs" / f"meeting-{name}-{size}.log"
    janus = janus_target(name, log_file=log_file)
    if janus is not None:
        return janus
    if name == "townhall" or name.startswith("townhall:"):
        source = None
        if name != "townhall":
            sources = dict(v.split("=", 1) for v in args.variant)
            source = Path(sources[name.partition(":")[2]]).resolve()
        width, _, height = args.tile.partition("x")
        tile = (int(width), int(height)) if args.tile else None
        return TownhallTarget(name=name, command=DEFAULT_COMMAND, log_file=log_file,
                              source=source, measure_delay=not args.no_delay, tile=tile)
    raise SystemExit(f"unknown target {name!r}"
                     " (townhall, townhall:LABEL, janus, janus-1loop[-twccMS])")


async def take_turns(people: People, turn: float, changes: list[float]) -> None:
    """One participant speaks at a time; the turn passes to the next every ``turn`` seconds
    (the times it changed go to ``changes``)."""
    n = 0
    while True:
        for index, (producer, _) in enumerate(people):
            producer.speaking = index == n % len(people)
        changes.append(time.monotonic())
        n += 1
        await asyncio.sleep(turn)


def failed_sends(people: People) -> dict[str, int]:
    out: dict[str, int] = {}
    for producer, _ in people:
        for reason, n in producer.failed_sends.items():
            out[reason] = out.get(reason, 0) + n
    return out


def jump_summary(people: People, since: float, until: float,
                 changes: list[float]) -> tuple[dict[str, int], int, int, list[Any]]:
    """Jumps in the consumers' sequence numbers between ``since`` and ``until``: numbers
    skipped per kind, jumps, jumps within 1 s after a turn change, and the first 40."""
    found = sorted(j for _, consumer in people for j in consumer.jumps(since) if j[0] < until)
    skipped: dict[str, int] = {}
    after_turn = 0
    sample: list[tuple[float, float, str, int]] = []
    for at, kind, missing in found:
        skipped[kind] = skipped.get(kind, 0) + missing
        turned = max((c for c in changes if c <= at), default=since)
        after_turn += at - turned < 1.0
        if len(sample) < 40:
            sample.append((round(at - since, 3), round(at - turned, 3), kind, missing))
    return skipped, len(found), after_turn, sample


def _kinds(people: People) -> tuple[dict[str, int], dict[str, int]]:
    sent: dict[str, int] = {}
    got: dict[str, int] = {}
    for producer, consumer in people:
        for kind, count in producer.packets_sent_by_kind().items():
            sent[kind] = sent.get(kind, 0) + count
        for kind, count in consumer.packets_by_kind().items():
            got[kind] = got.get(kind, 0) + count
    return sent, got


async def _scrape(target: Any) -> tuple[list[tuple[float, int]], dict[str, float]]:
    """The delay histogram and the server's loss counters (townhall)."""
    if not isinstance(target, TownhallTarget):
        return [], {}
    metrics = await target.metrics()
    return delay_buckets(metrics) if target.measure_delay else [], server_counters(metrics)


#: Seconds a benchmark participant's connection may take to close.
CLOSE_TIMEOUT = 10
#: Seconds the server is watched after everyone left: longer than a closed connection waits
#: before it is taken apart (``transport.TAKE_APART_AFTER``).
LEAVE_WAIT = 12.0
#: What the server logs of a long collection (``server/pauses.py``).
COLLECTION_LOGGED = re.compile(r"garbage collection \(generation \d\) held the server for "
                               r"(\d+) ms")


def _log_size(target: TownhallTarget) -> int:
    log = target.log_file
    return log.stat().st_size if log is not None and log.exists() else 0


def _collections_logged(target: TownhallTarget, since: int) -> list[float]:
    """The long collections the server logged after byte ``since`` of its log, in ms."""
    log = target.log_file
    if log is None or not log.exists():
        return []
    with log.open("rb") as file:
        file.seek(since)
        text = file.read().decode(errors="replace")
    return [float(found) for found in COLLECTION_LOGGED.findall(text)]


async def run_one(name: str, size: int, clip: Clip, args: argparse.Namespace) -> MeetingResult:
    target = make_target(name, size, args)
    people: People = [
        (SyntheticProducer(clip, simulcast=not args.no_simulcast, pace=args.pace,
                           twcc=args.producer_twcc),
         SyntheticConsumer(raw=True, remb=args.remb or None, twcc=not args.no_twcc))
        for _ in range(size)
    ]
    turns: asyncio.Task[None] | None = None
    result: MeetingResult | None = None
    left_at: int | None = None  # the server log's size when everyone left
    changes: list[float] = []
    try:
        started = time.monotonic()
        start_errors = udp_counters()
        await target.start()
        start_drops = process_udp_drops(target.pid)
        if isinstance(target, JanusTarget):
            rids = [rid for rid, *_ in LAYERS]
            await target.join_meeting(people, videos=args.last_n,
                                      substream=rids.index(args.janus_layer),
                                      interval=args.join_interval)
        else:
            await target.join_meeting(people, interval=args.join_interval)
        logger.info("%s: %d participants in the meeting after %.1f s", name, size,
                    time.monotonic() - started)
        turns = asyncio.create_task(take_turns(people, args.turn, changes))
        await asyncio.sleep(args.warmup)

        pid = target.pid
        sent0, got0 = _kinds(people)
        gaps0 = sum(c.lost_packets for _, c in people)
        send_errors0 = sum(p.send_errors for p, _ in people)
        drops0, client_drops0 = process_udp_drops(pid), process_udp_drops(os.getpid())
        errors0 = udp_counters()
        join_errors = {name: errors0[name] - start_errors.get(name, 0) for name in UDP_ERRORS
                       if name in errors0}
        delay0, counters0 = await _scrape(target)
        profiler = start_profile(target, size, args) if args.profile else None
        server0, client0 = process_cpu_times(pid), self_cpu_seconds()
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        note_window(t0, t0 + elapsed)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait)
        server1, client1 = process_cpu_times(pid), self_cpu_seconds()
        t1 = time.monotonic()
        delay1, counters1 = await _scrape(target)
        drops1, client_drops1 = process_udp_drops(pid), process_udp_drops(os.getpid())
        errors1 = udp_counters()
        skipped, jumps, after_turn, sample = jump_summary(people, t0, t1, changes)
        gaps1 = sum(c.lost_packets for _, c in people)
        send_errors1 = sum(p.send_errors for p, _ in people)
        sent1, got1 = _kinds(people)
        rss, peak = memory_mb(pid)
        threads = len(os.listdir(f"/proc/{pid}/task"))

        cpu = sum(server1) - sum(server0)

        def in_window(counter: str) -> float:
            return counters1.get(counter, 0) - counters0.get(counter, 0)

        sent = {k: n - sent0.get(k, 0) for k, n in sent1.items()}
        got = {k: n - got0.get(k, 0) for k, n in got1.items()}
        p50, samples = percentile(delay0, delay1, 0.50)
        p99, _ = percentile(delay0, delay1, 0.99)
        delivered = sum(n for kind, n in got.items() if kind != "padding")
        result = MeetingResult(
            target=name,
            participants=size,
            seconds=round(elapsed, 2),
            server_cpu_percent=round(100 * cpu / elapsed, 1),
            server_system_percent=round(100 * (server1[1] - server0[1]) / elapsed, 1),
            server_rss_mb=rss,
            server_peak_rss_mb=peak,
            server_threads=threads,
            sent_packets=sum(sent.values()),
            delivered_packets=delivered,
            packets_per_cpu_second=round(delivered / cpu) if cpu > 0 else 0,
            sfu_socket_drops=drops_between(drops0, drops1),
            consumer_sequence_gaps=gaps1 - gaps0,
            client_socket_drops=drops_between(client_drops0, client_drops1),
            delay_p50_ms=None if p50 is None else round(p50 * 1000, 2),
            delay_p99_ms=None if p99 is None else round(p99 * 1000, 2),
            delay_samples=samples,
            delay_histogram=histogram(delay0, delay1),
            client_cpu_percent=round(100 * (client1 - client0) / elapsed, 1),
            load_average_1min=round(os.getloadavg()[0], 2),
            sent_by_kind=sent,
            delivered_by_kind=got,
            receiving_restarts=target.restarts if isinstance(target, TownhallTarget) else 0,
            udp_errors={name: errors1[name] - errors0.get(name, 0) for name in UDP_ERRORS
                        if name in errors1},
            join_udp_errors=join_errors,
            join_sfu_socket_drops=drops_between(start_drops, drops0),
            server_packets_dropped=int(in_window("townhall_packets_dropped_total")),
            server_copies_unsent=int(in_window("townhall_copies_unsent_total")),
            join_loop_stalls=int(counters0.get("townhall_loop_stalls_total", 0)),
            join_loop_stalled_ms=round(
                1000 * counters0.get("townhall_loop_stall_seconds_total", 0), 1),
            join_longest_stall_ms=round(
                1000 * counters0.get("townhall_loop_longest_stall_seconds", 0), 1),
            loop_stalls=int(in_window("townhall_loop_stalls_total")),
            loop_stalled_ms=round(1000 * in_window("townhall_loop_stall_seconds_total"), 1),
            producer_send_errors=send_errors1 - send_errors0,
            producer_failed_sends=failed_sends(people),
            skipped_by_kind=skipped,
            jumps=jumps,
            jumps_after_turn=after_turn,
            jump_sample=sample,
        )
        if isinstance(target, TownhallTarget):  # everyone leaves; the server stays up
            left_at = _log_size(target)
            await target.leave_all()
            await asyncio.sleep(LEAVE_WAIT)
            _, counters2 = await _scrape(target)

            def after_leaving(counter: str) -> float:
                return counters2.get(counter, 0) - counters1.get(counter, 0)

            result.leave_loop_stalls = int(after_leaving("townhall_loop_stalls_total"))
            result.leave_loop_stalled_ms = round(
                1000 * after_leaving("townhall_loop_stall_seconds_total"), 1)
            result.rss_after_leave_mb = memory_mb(pid)[0]
        return result
    finally:
        if turns is not None:
            turns.cancel()
        await target.stop()  # signalling first: no offer reaches a closed consumer
        if result is not None and left_at is not None and isinstance(target, TownhallTarget):
            collections = _collections_logged(target, left_at)
            result.leave_collections_ms = round(sum(collections), 1)
            result.leave_longest_collection_ms = round(max(collections, default=0.0), 1)
        for producer, consumer in people:
            for closing in (consumer.close(), producer.close()):
                try:  # a connection that never finishes closing must not lose the result
                    await asyncio.wait_for(closing, CLOSE_TIMEOUT)
                except TimeoutError:
                    logger.warning("%s: a participant's connection did not close in %d s",
                                   name, CLOSE_TIMEOUT)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def markdown(results: list[MeetingResult], cpu_limit: float) -> str:
    lines = [
        "| target | participants | server CPU % (system) | memory MB (peak) | delivered pkts "
        "| pkts per CPU-s | loss at SFU (socket drops + gaps) | delay p50 / p99 ms "
        "| client CPU % | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.target} | {r.participants} | failed: {r.error} "
                         "| | | | | | | |")
            continue
        delay = "" if r.delay_p50_ms is None else f"{r.delay_p50_ms} / {r.delay_p99_ms}"
        lines.append(
            f"| {r.target} | {r.participants} | {r.server_cpu_percent} "
            f"({r.server_system_percent}) | {r.server_rss_mb} ({r.server_peak_rss_mb}) "
            f"| {r.delivered_packets} | {r.packets_per_cpu_second} "
            f"| {r.sfu_loss} ({r.sfu_socket_drops} + {r.consumer_sequence_gaps}"
            f" - {r.client_socket_drops} at the client) | {delay} | {r.client_cpu_percent} "
            f"| {r.load_average_1min} |"
        )
    lines += ["", "| target | participants | sequence jumps (within 1 s of a turn change) "
              "| numbers skipped by kind | UDP errors in the namespace "
              "| server: dropped / unsent | producers' failed sends |",
              "|---|---:|---:|---|---|---:|---:|"]
    for r in results:
        if not r.error:
            skipped = ", ".join(f"{k} {n}" for k, n in sorted(r.skipped_by_kind.items()))
            errors = ", ".join(f"{k} {n}" for k, n in r.udp_errors.items() if n)
            lines.append(f"| {r.target} | {r.participants} | {r.jumps} ({r.jumps_after_turn}) "
                         f"| {skipped or '—'} | {errors or '—'} "
                         f"| {r.server_packets_dropped} / {r.server_copies_unsent} "
                         f"| {r.producer_send_errors} |")
    lines += ["", "| target | participants | while joining: datagrams dropped at the server "
              "| loop stalls ≥ 100 ms (total ms, longest ms) | in the window: loop stalls "
              "(total ms) | after everyone left: loop stalls (total ms), collections until it "
              "stopped (total ms, longest ms), memory MB |", "|---|---:|---:|---|---|---|"]
    for r in results:
        if not r.error:
            lines.append(f"| {r.target} | {r.participants} | {r.join_sfu_socket_drops} "
                         f"| {r.join_loop_stalls} ({r.join_loop_stalled_ms}, "
                         f"{r.join_longest_stall_ms}) | {r.loop_stalls} ({r.loop_stalled_ms}) "
                         f"| {r.leave_loop_stalls} ({r.leave_loop_stalled_ms}), "
                         f"{r.leave_collections_ms} ({r.leave_longest_collection_ms}), "
                         f"{r.rss_after_leave_mb} |")
    for target in dict.fromkeys(r.target for r in results):
        fits = [r.participants for r in results if r.target == target and not r.error
                and r.server_cpu_percent <= cpu_limit and r.sfu_loss == 0]
        lines.append("")
        lines.append(f"{target}: largest meeting at ≤ {cpu_limit:g} % of one core with no loss "
                     f"at the SFU: {max(fits) if fits else 'none of the sizes run'}")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, path: Path) -> list[MeetingResult]:
    clip = load_clip()
    results: list[MeetingResult] = []
    for _ in range(args.repeat):
        for name in args.targets.split(","):
            for size in (int(n) for n in args.participants.split(",")):
                logger.info("meeting: %s with %d participants", name, size)
                try:
                    result = await run_one(name, size, clip, args)
                except Exception as exc:
                    logger.exception("meeting %s/%d failed", name, size)
                    result = MeetingResult(name, size, error=f"{type(exc).__name__}: {exc}")
                logger.info("result: %s", result)
                results.append(result)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({
                    "command": " ".join(["python", "bench/meeting.py", *sys.argv[1:]]),
                    "machine": machine(),
                    "results": [asdict(r) for r in results],
                }, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", default="20", help="comma-separated meeting sizes")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--targets", default="townhall,janus-1loop")
    parser.add_argument("--join-interval", type=float, default=0.5,
                        help="seconds between two participants' joins")
    parser.add_argument("--turn", type=float, default=3.0, help="seconds each speaker talks")
    parser.add_argument("--last-n", type=int, default=6, help="videos each participant gets")
    parser.add_argument("--tile", default="320x180",
                        help="size the pages report for every video (townhall; '' for none)")
    parser.add_argument("--janus-layer", default="h", help="Janus subscribers' substream")
    parser.add_argument("--remb", type=int, default=2_500_000, help="consumers' REMB, bit/s")
    parser.add_argument("--no-twcc", action="store_true",
                        help="consumers do not accept transport-wide congestion control")
    parser.add_argument("--no-simulcast", action="store_true", help="one video layer only")
    parser.add_argument("--pace", action="store_true",
                        help="participants pace their video as a browser does (participants.Pacer)")
    parser.add_argument("--producer-twcc", action="store_true",
                        help="participants number their video with transport-wide sequence "
                        "numbers, as browsers do, and the server sends them transport feedback")
    parser.add_argument("--no-delay", action="store_true",
                        help="do not turn on townhall's forwarding-delay measurement")
    parser.add_argument("--cpu-limit", type=float, default=70.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SRC")
    parser.add_argument("--profile", choices=("python", "native", "perf", "perf-dwarf"),
                        default=None,
                        help="record the server during the window (townhall only; see "
                             "sfu_forwarding.py's start_profile)")
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aioice", "aiortc", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enter_own_network_namespace()
    path = Path(args.out) / f"meeting-{time.strftime('%Y%m%dT%H%M%S')}.json"
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        results = uvloop.run(main_async(args, path))
    else:
        results = asyncio.run(main_async(args, path))
    print(markdown(results, args.cpu_limit))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
