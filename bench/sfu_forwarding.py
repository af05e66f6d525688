"""SFU forwarding cost: forwarded packets per server CPU-second, one producer to N consumers.

    python bench/sfu_forwarding.py --consumers 1,5,10,20 --seconds 20 --targets janus,janus-1loop

For each target and consumer count: start the server, connect one producer (VP8 640x360 ~600 kbit/s
30 fps + Opus 20 ms, replayed from a pre-encoded clip) and N consumers, warm up, then measure for
``--seconds``: the server process's CPU time (utime + stime of all its threads, /proc/PID/stat) and
the RTP packets all consumers received. Reported: delivered packets per server CPU-second, server
and client CPU %, delivered/expected (expected = packets the producer sent x N), and the median
time from a consumer's first signalling message to its first RTP packet. With ``--delay`` a
townhall server also measures how long it holds each forwarded copy (kernel receive timestamp of
the datagram to the send call of the copy; one system call per received datagram, so it is off
for the packets-per-CPU-second figures), reported as p50/p99 over the window.

``--rooms R`` runs R such rooms on the one server at once (a producer and N consumers each: the
load of R meetings whose fan-outs are N wide, rather than one fan-out R × N wide); ``--pace``
makes the producers send video through a browser's pacer (``participants.Pacer``) instead of
each frame's packets at once.

``--together`` runs the targets at once, each with its own producer and consumers, and measures
them over the same window (``run_together``), one window per consumer count and ``--repeat``.
Run one after another, a pair of runs is minutes apart, and the machine's speed drifts in
between (on this machine one server's packets per CPU-second at 20 consumers went from 34,000
in one set of runs to 56,000 in the next); together, the drift falls on all of them at once
and cancels from their ratios. They share the machine's two CPUs and caches with each other as
well as with the client.

Everything runs in a network namespace of the benchmark's own: the script re-executes itself under
``unshare --net`` (needs root or user namespaces), brings up ``lo``, adds 127.0.0.2/8 to it (aioice
never offers 127.0.0.1 as a host candidate) and adds a veth pair, both ends inside the namespace,
with 10.99.99.1/24 on one end (Janus never gathers on a loopback interface). No packet leaves the
namespace; packets between its local addresses take the kernel's local path.

Prints a Markdown table and writes JSON to bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from forwarding_delay import delay_buckets, histogram, percentile  # noqa: E402
from janus import BENCH_ADDRESS, janus_target  # noqa: E402
from participants import OUT_DIR, Clip, SyntheticConsumer, SyntheticProducer, load_clip  # noqa: E402
from target import Target  # noqa: E402
from window import note_window  # noqa: E402

logger = logging.getLogger("sfu_forwarding")

NAMESPACE_ENV = "TOWNHALL_BENCH_NETNS"
CLIENT_ADDRESS = "127.0.0.2/8"
BENCH_INTERFACE = "thbench0"
PEER_INTERFACE = "thbench1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    target: str
    consumers: int
    seconds: float
    sent_packets: int
    expected_packets: int
    delivered_packets: int
    delivered_ratio: float
    server_cpu_seconds: float
    server_cpu_percent: float
    server_system_percent: float
    packets_per_cpu_second: float
    client_cpu_percent: float
    join_to_first_packet_ms_median: float | None
    server_threads: int
    #: PLI and FIR the producers received in the window
    keyframe_requests: int
    load_average_1min: float = 0.0
    #: rooms on the server, each with a producer and ``consumers`` consumers
    rooms: int = 1
    #: the producers sent through a browser's pacer
    paced: bool = False
    sent_by_kind: dict[str, int] | None = None
    delivered_by_kind: dict[str, int] | None = None
    #: townhall with the native fan-out: copies it made in C and consumers it left to Python,
    #: since the server started (``/metrics``).
    copies: dict[str, int] | None = None
    #: townhall with --delay: how long the server held each forwarded copy in the window
    #: (its ``townhall_forwarding_delay_seconds`` histogram), p50/p99 in ms
    delay_p50_ms: float | None = None
    delay_p99_ms: float | None = None
    delay_samples: int = 0
    delay_histogram: dict[str, int] | None = None
    #: time the server's threads were ready to run but waited for a CPU (run-queue wait,
    #: /proc/PID/task/*/schedstat), in ms per second of the window; and how many times they
    #: were switched out while still runnable (preempted)
    server_waiting_ms_per_second: float | None = None
    server_preempted: int | None = None
    #: time the hypervisor kept the machine's virtual CPUs from running ("steal" in /proc/stat,
    #: all CPUs together), in ms per second of the window; the guest counts it as run time of
    #: whatever was on the CPU
    steal_ms_per_second: float | None = None
    #: datagrams a full receive queue dropped in the window, in the whole network namespace
    #: (the server's socket and the benchmark's; RcvbufErrors in /proc/net/snmp)
    udp_receive_errors: int | None = None
    #: the longest any producer's sending loop was behind its clock in the window (ms): the
    #: benchmark's client held up, so that its producers then sent in a burst
    producers_late_ms: float | None = None
    #: the benchmark client's garbage collections in the window, and the longest (ms): each
    #: holds the producers as it does the rest of the client
    client_collections: int | None = None
    client_longest_collection_ms: float | None = None
    #: the server's threads' run time in the window in seconds, counted in nanoseconds
    #: (schedstat; threads that started or ended within the window are left out), and the
    #: packets delivered per second of it
    server_run_seconds: float | None = None
    packets_per_run_second: float | None = None
    error: str | None = None
    #: servers measured in the same window, this one included (``--together``; 1: alone)
    together: int = 1


# --------------------------------------------------------------------------------------------
# Namespace and process accounting
# --------------------------------------------------------------------------------------------


def enter_own_network_namespace() -> None:
    """Re-execute this script in a fresh network namespace, once; then set up loopback."""
    if os.environ.get(NAMESPACE_ENV) != "1":
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("unshare (util-linux) is needed to run the benchmark in its own namespace")
        args = [unshare, "--net"]
        if os.geteuid() != 0:
            args += ["--map-root-user"]
        env = dict(os.environ, **{NAMESPACE_ENV: "1"})
        os.execvpe(unshare, [*args, "--", sys.executable, *sys.argv], env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for command in (
        ["ip", "addr", "add", CLIENT_ADDRESS, "dev", "lo"],
        # a veth pair kept entirely inside the namespace: the kernel here has no dummy driver
        ["ip", "link", "add", BENCH_INTERFACE, "type", "veth", "peer", "name", PEER_INTERFACE],
        ["ip", "addr", "add", f"{BENCH_ADDRESS}/24", "dev", BENCH_INTERFACE],
        ["ip", "link", "set", BENCH_INTERFACE, "up"],
        ["ip", "link", "set", PEER_INTERFACE, "up"],
    ):
        subprocess.run(command, check=True)


def process_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, all threads included (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included."""
    return sum(process_cpu_times(pid))


def process_schedstat(pid: int) -> dict[str, tuple[int, int, int]]:
    """Per thread alive now: (nanoseconds it ran, nanoseconds it was ready but waited for a
    CPU, times it was preempted), from /proc/PID/task/*/schedstat and …/status. The run time
    is counted in nanoseconds; /proc/PID/stat's utime and stime in 10 ms steps."""
    threads = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                fields = stat.read().split()
            preempted = 0
            with open(f"/proc/{pid}/task/{task}/status") as status:
                for line in status:
                    if line.startswith("nonvoluntary_ctxt_switches:"):
                        preempted = int(line.split()[1])
            threads[task] = (int(fields[0]), int(fields[1]), preempted)
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that ended meanwhile, or a kernel without schedstat
    return threads


def schedstat_change(before: dict[str, tuple[int, int, int]],
                     after: dict[str, tuple[int, int, int]]) -> tuple[float, float, int]:
    """(seconds run, seconds waited, preemptions) between two samples, summed over the threads
    in both (a thread that started or ended in between is left out)."""
    common = before.keys() & after.keys()
    return (sum(after[t][0] - before[t][0] for t in common) / 1e9,
            sum(after[t][1] - before[t][1] for t in common) / 1e9,
            sum(after[t][2] - before[t][2] for t in common))


def machine_steal() -> float:
    """Seconds the hypervisor ran something else while this machine's CPUs had work (the
    "steal" column of /proc/stat's ``cpu`` line); 0 where the kernel does not count it."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def udp_counters() -> dict[str, int]:
    """The network namespace's UDP counters (/proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {name: int(value) for name, value in zip(lines[0][1:], lines[1][1:], strict=False)}


def pin(pid: int, cpus: set[int]) -> int:
    """Keep every thread of ``pid`` alive now on ``cpus`` (threads they start later inherit
    it); returns how many threads were pinned."""
    pinned = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
            pinned += 1
        except ProcessLookupError:
            pass  # the thread ended meanwhile
    return pinned


#: The CPUs the benchmark may use, before ``--pin`` narrows its own.
CPUS = sorted(os.sched_getaffinity(0))


def pin_both(server: int) -> None:
    """The benchmark's client on the first CPU, the server on the last: neither waits for a
    CPU the other holds (``--pin``)."""
    first, last = CPUS[0], CPUS[-1]
    pin(os.getpid(), {first})
    logger.info("pinned: client on CPU %d, %d server threads on CPU %d", first,
                pin(server, {last}), last)


def process_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def start_profile(
    target: Target, consumers: int, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    """Record the server during the measured window.

    ``python``/``native``: py-spy's raw collapsed stacks (see profile.py); it samples wall-clock
    time, so on a loaded machine a thread waiting for a CPU counts where it was preempted (mostly
    at the end of a system call). ``perf``: ``perf record -e cpu-clock`` samples only while the
    server runs on a CPU, kernel included — the true split of its CPU time between the kernel,
    the interpreter, libsrtp and the event loop (``perf report --sort dso,sym``).
    ``perf-dwarf``: the same with DWARF call graphs, whose stacks reach the event loop callback
    each sample belongs to (``python bench/perf_stages.py FILE``).
    """
    stem = Path(args.out) / f"profile-{target.name}-{consumers}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    seconds = str(int(args.seconds))
    if args.profile in ("perf", "perf-dwarf"):
        graph = ["-F", "1000", "-g"] if args.profile == "perf" else \
            ["-F", "2000", "--call-graph", "dwarf,16384"]
        command = ["perf", "record", "-e", "cpu-clock", *graph, "-p", str(target.pid),
                   "-o", str(stem.with_suffix(".perf")), "--", "sleep", seconds]
    else:
        command = ["py-spy", "record", "--pid", str(target.pid), "--duration", seconds,
                   "--rate", "200", "--format", "raw", "--output", str(stem.with_suffix(".txt"))]
        # native frames need the process paused while sampling; pure Python ones do not
        command.append("--native" if args.profile == "native" else "--nonblocking")
    logger.info("profiling the server: %s", " ".join(command))
    log = stem.with_suffix(".log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def make_target(name: str, consumers: int, args: argparse.Namespace, place: int = 0) -> Target:
    """Target ``name``; ``place``: its index among the targets running at once, which gives
    each its own ports."""
    log_file = Path(args.out) / "logs" / f"{name}-{consumers}.log"
    janus = janus_target(name, log_file=log_file, rooms=args.rooms, http_port=8088 + place)
    if janus is not None:
        return janus
    if name == "townhall" or name.startswith("townhall:"):
        from townhall_target import DEFAULT_COMMAND, TownhallTarget

        source = None
        if name != "townhall":
            label = name.partition(":")[2]
            sources = dict(v.split("=", 1) for v in args.variant)
            if label not in sources:
                raise SystemExit(f"target {name}: no --variant {label}=SRC")
            source = Path(sources[label]).resolve()
        return TownhallTarget(name=name, command=args.townhall_command or DEFAULT_COMMAND,
                              http_port=18080 + 10 * place, media_udp_port=10000 + 10 * place,
                              media_tcp_port=10001 + 10 * place, log_file=log_file,
                              source=source, measure_delay=args.delay, rooms=args.rooms)
    raise SystemExit(f"unknown target {name!r}"
                     " (janus, janus-1loop[-twccMS], townhall, townhall:LABEL)")


@dataclass
class _Run:
    """One target set up for a run: its server, producers and consumers."""

    name: str
    consumers: int
    target: Any
    producers: list[SyntheticProducer]
    subscribed: list[SyntheticConsumer]


@dataclass
class _Sample:
    """What one run's counters said at one edge of the measured window."""

    sent: int
    requests: int
    sent_kinds: dict[str, int]
    got: int
    got_kinds: dict[str, int]
    server: tuple[float, float]
    schedstat: dict[str, tuple[int, int, int]]
    #: the longest any producer's sending loop was behind its clock so far (s)
    late: float


async def _set_up(name: str, consumers: int, clip: Clip, args: argparse.Namespace,
                  place: int, runs: list[_Run]) -> None:
    """Start target ``name`` and connect its producers and consumers; the run goes into
    ``runs`` before its server starts, so that a failure on the way still stops it."""
    target = make_target(name, consumers, args, place)
    run = _Run(name, consumers, target,
               [SyntheticProducer(clip, simulcast=args.simulcast, pace=args.pace,
                                  twcc=args.producer_twcc) for _ in range(args.rooms)], [])
    runs.append(run)
    t_start = time.monotonic()
    await target.start()
    t_started = time.monotonic()
    for room, producer in enumerate(run.producers):
        await target.connect_producer(producer, room)
    t_producer = time.monotonic()
    for room in range(args.rooms):
        for _ in range(consumers):
            consumer = SyntheticConsumer(raw=args.raw_consumers, remb=args.remb or None,
                                         twcc=args.twcc)
            run.subscribed.append(consumer)
            await target.connect_consumer(consumer, room)
    logger.info(
        "%s: started in %.1f s, %d producer(s) connected in %.1f s, %d consumers in %.1f s",
        name,
        t_started - t_start,
        len(run.producers),
        t_producer - t_started,
        len(run.subscribed),
        time.monotonic() - t_producer,
    )


def _sample(run: _Run) -> _Sample:
    return _Sample(
        sent=sum(p.packets_sent for p in run.producers),
        requests=sum(p.keyframe_requests for p in run.producers),
        sent_kinds=_sum_kinds(p.packets_sent_by_kind() for p in run.producers),
        got=sum(c.total_packets for c in run.subscribed),
        got_kinds=_sum_kinds(c.packets_by_kind() for c in run.subscribed),
        server=process_cpu_times(run.target.pid),
        schedstat=process_schedstat(run.target.pid),
        late=max(p.most_late for p in run.producers),
    )


async def _tear_down(run: _Run) -> None:
    for consumer in run.subscribed:
        await consumer.close()
    for producer in run.producers:
        await producer.close()
    await run.target.stop()


async def run_one(name: str, consumers: int, clip: Clip, args: argparse.Namespace) -> RunResult:
    """One target alone: set up, warm up, measure for ``--seconds``."""
    return (await run_together([name], consumers, clip, args))[0]


async def run_together(names: list[str], consumers: int, clip: Clip,
                       args: argparse.Namespace) -> list[RunResult]:
    """The targets ``names`` set up one after another, each with its own producers and
    consumers, then warmed up and measured over one and the same window (``--together``): the
    machine's drift from minute to minute, which moves every server's CPU cost alike, falls
    on all of them at once. Raises if any of them fails."""
    runs: list[_Run] = []
    try:
        for place, name in enumerate(names):
            await _set_up(name, consumers, clip, args, place, runs)
        if args.pin:
            pin_both(runs[0].target.pid)
        # every peer connection and its objects live until the teardown: no collection looks
        # at them, and none runs from the warm-up to the end of the window (a collection holds
        # the producers as it does the rest of the client, and they then send in a burst: a
        # client with the peer connections frozen still collected for up to 31 ms in a window)
        gc.collect()
        gc.freeze()
        gc.disable()
        await asyncio.sleep(args.warmup)
        if args.pin:  # threads the server started while clients joined
            pin_both(runs[0].target.pid)

        delays0 = [await _delay(run.target) for run in runs]
        profiler = start_profile(runs[0].target, consumers, args) if args.profile else None
        before = [_sample(run) for run in runs]
        steal0 = machine_steal()
        udp0 = udp_counters()
        for run in runs:
            for producer in run.producers:
                producer.most_late = 0.0
        client0 = self_cpu_seconds()
        t0 = time.monotonic()
        with _Collections() as collections:
            await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        gc.enable()
        note_window(t0, t0 + elapsed)
        after = [_sample(run) for run in runs]
        steal1 = machine_steal()
        udp1 = udp_counters()
        client1 = self_cpu_seconds()
        shared = {
            "client_cpu_percent": round(100 * (client1 - client0) / elapsed, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "steal_ms_per_second": round(1000 * (steal1 - steal0) / elapsed, 1),
            "udp_receive_errors": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
            "together": len(runs),
            "client_collections": collections.count,
            "client_longest_collection_ms": round(collections.longest * 1000, 1),
        }
        results = []
        for run, first, last, delay0 in zip(runs, before, after, delays0, strict=True):
            results.append(await _result(run, first, last, delay0, elapsed, shared, args))
        if profiler is not None:
            await asyncio.to_thread(profiler.wait)
        return results
    finally:
        for run in runs:
            try:
                await _tear_down(run)
            except Exception:  # the others are stopped all the same
                logger.exception("%s: stopping it failed", run.name)
        gc.enable()  # where the window did not end
        gc.unfreeze()  # the cycles of this window's peer connections are collected again


class _Collections:
    """The client's garbage collections while in the ``with`` block: how many, the longest."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0
        self._started = 0.0

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._collection)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._collection)

    def _collection(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._started)


async def _result(run: _Run, before: _Sample, after: _Sample, delay0: list[tuple[float, int]],
                  elapsed: float, shared: dict[str, Any],
                  args: argparse.Namespace) -> RunResult:
    """One run's figures for the window between ``before`` and ``after``."""
    target, consumers = run.target, run.consumers
    sent = after.sent - before.sent
    delivered = after.got - before.got
    sent_kinds = _diff(after.sent_kinds, before.sent_kinds)
    got_kinds = _diff(after.got_kinds, before.got_kinds)
    threads = process_threads(target.pid)
    if args.producer_twcc:
        logger.info("%s: the producers got %d transport feedback packets in all", run.name,
                    sum(p.transport_feedback for p in run.producers))
    if args.twcc:
        logger.info("%s: the consumers sent %d transport feedback packets in all", run.name,
                    sum(c.feedback_sent for c in run.subscribed))
    copies = await _copies(target)
    delay1 = await _delay(target)

    server_cpu = sum(after.server) - sum(before.server)
    server_run, server_waited, server_preempted = schedstat_change(before.schedstat,
                                                                   after.schedstat)
    server_system = after.server[1] - before.server[1]
    # with simulcast each consumer is expected to get one layer (--expect-layer)
    per_consumer = sum(n for kind, n in sent_kinds.items()
                       if kind in ("audio", "video", f"video-{args.expect_layer}"))
    expected = per_consumer * consumers
    p50, samples = percentile(delay0, delay1, 0.50)
    p99, _ = percentile(delay0, delay1, 0.99)
    latencies = [
        (c.first_packet_at - c.created_at) * 1000
        for c in run.subscribed
        if c.first_packet_at is not None
    ]
    return RunResult(
        target=run.name,
        consumers=consumers,
        seconds=round(elapsed, 2),
        sent_packets=sent,
        expected_packets=expected,
        delivered_packets=delivered,
        delivered_ratio=round(delivered / expected, 4) if expected else 0.0,
        server_cpu_seconds=round(server_cpu, 2),
        server_cpu_percent=round(100 * server_cpu / elapsed, 1),
        server_system_percent=round(100 * server_system / elapsed, 1),
        packets_per_cpu_second=round(delivered / server_cpu) if server_cpu > 0 else 0,
        join_to_first_packet_ms_median=(
            round(statistics.median(latencies), 1) if latencies else None
        ),
        server_threads=threads,
        keyframe_requests=after.requests - before.requests,
        rooms=args.rooms,
        paced=args.pace,
        sent_by_kind=sent_kinds,
        delivered_by_kind=got_kinds,
        copies=copies,
        delay_p50_ms=None if p50 is None else round(p50 * 1000, 2),
        delay_p99_ms=None if p99 is None else round(p99 * 1000, 2),
        delay_samples=samples,
        delay_histogram=histogram(delay0, delay1) if samples else None,
        server_waiting_ms_per_second=round(1000 * server_waited / elapsed, 2),
        server_preempted=server_preempted,
        server_run_seconds=round(server_run, 4),
        packets_per_run_second=round(delivered / server_run) if server_run > 0 else 0,
        producers_late_ms=round(1000 * after.late, 1),
        **shared,
    )


async def _copies(target: Any) -> dict[str, int] | None:
    """The native fan-out's counters from a townhall server's ``/metrics``, if it has them."""
    if not hasattr(target, "metrics"):
        return None
    text = await target.metrics()
    found = dict(re.findall(r"^townhall_copies_(native|python)_total (\d+)$", text, re.MULTILINE))
    return {kind: int(n) for kind, n in found.items()} or None


async def _delay(target: Any) -> list[tuple[float, int]]:
    """The forwarding-delay histogram of a townhall server that measures it, else nothing."""
    if not getattr(target, "measure_delay", False):
        return []
    return delay_buckets(await target.metrics())


def _sum_kinds(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for kind, n in count.items():
            total[kind] = total.get(kind, 0) + n
    return total


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: n - before.get(kind, 0) for kind, n in after.items()}


def failed(name: str, consumers: int, error: BaseException) -> RunResult:
    return RunResult(
        target=name,
        consumers=consumers,
        seconds=0.0,
        sent_packets=0,
        expected_packets=0,
        delivered_packets=0,
        delivered_ratio=0.0,
        server_cpu_seconds=0.0,
        server_cpu_percent=0.0,
        server_system_percent=0.0,
        packets_per_cpu_second=0,
        client_cpu_percent=0.0,
        join_to_first_packet_ms_median=None,
        server_threads=0,
        keyframe_requests=0,
        error=f"{type(error).__name__}: {error}",
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _blank(value: float | None) -> str:
    return "" if value is None else str(value)


def markdown(results: list[RunResult]) -> str:
    head = (
        "| target | consumers | delivered pkts | delivered/expected | server CPU % (system) "
        "| **pkts per CPU-s** | server threads | client CPU % | join→first pkt (median ms) "
        "| load avg | delay p50 / p99 ms | server waiting for a CPU (ms/s, preempted) "
        "| stolen by the hypervisor (ms/s) | UDP receive errors | producers late (max ms) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        shape = f"{r.rooms} × {r.consumers}" if r.rooms > 1 else str(r.consumers)
        if r.paced:
            shape += ", paced"
        if r.error:
            rows.append(f"| {r.target} | {shape} | failed: {r.error} | | | | | | | | | | | | |")
            continue
        latency = (
            "" if r.join_to_first_packet_ms_median is None else r.join_to_first_packet_ms_median
        )
        delay = ("" if r.delay_p50_ms is None
                 else f"{r.delay_p50_ms} / {r.delay_p99_ms}")
        waiting = ("" if r.server_waiting_ms_per_second is None
                   else f"{r.server_waiting_ms_per_second} ({r.server_preempted})")
        rows.append(
            f"| {r.target} | {shape} | {r.delivered_packets} | {r.delivered_ratio:.4f} "
            f"| {r.server_cpu_percent} ({r.server_system_percent}) "
            f"| **{r.packets_per_cpu_second}** | {r.server_threads} "
            f"| {r.client_cpu_percent} | {latency} | {r.load_average_1min} | {delay} "
            f"| {waiting} | {_blank(r.steal_ms_per_second)} | {_blank(r.udp_receive_errors)} "
            f"| {_blank(r.producers_late_ms)} |"
        )
    return head + "\n".join(rows) + "\n"


def machine() -> dict[str, Any]:
    janus_version = ""
    if shutil.which("janus"):
        out = subprocess.run(["janus", "--version"], capture_output=True, text=True, check=False)
        janus_version = out.stdout.splitlines()[0] if out.stdout else ""
    import aiortc

    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "aiortc": aiortc.__version__,
        "janus": janus_version,
        "kernel": os.uname().release,
    }


def write_json(path: Path, args: argparse.Namespace, results: list[RunResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python", "bench/sfu_forwarding.py", *sys.argv[1:]]),
        "machine": machine(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


async def main_async(args: argparse.Namespace, path: Path) -> list[RunResult]:
    clip = load_clip()
    logger.info(
        "clip: %d frames, video %.0f kbit/s, %.1f video pkt/s + %d audio pkt/s",
        len(clip.video),
        clip.video_bitrate / 1000,
        clip.video_packets_per_second,
        50,
    )
    results: list[RunResult] = []
    names = args.targets.split(",")
    if args.together:
        for consumers in [int(n) for _ in range(args.repeat) for n in args.consumers.split(",")]:
            logger.info("run: %s together with %d consumers each", ", ".join(names), consumers)
            try:
                found = await run_together(names, consumers, clip, args)
            except Exception as exc:
                logger.exception("run %s/%d failed", ",".join(names), consumers)
                found = [failed(name, consumers, exc) for name in names]
            for result in found:
                logger.info("result: %s", result)
            results.extend(found)
            write_json(path, args, results)
        return results
    runs = [(name, int(n)) for _ in range(args.repeat) for name in names
            for n in args.consumers.split(",")]
    for name, consumers in runs:
        logger.info("run: %s with %d consumers", name, consumers)
        try:
            result = await run_one(name, consumers, clip, args)
        except Exception as exc:
            logger.exception("run %s/%d failed", name, consumers)
            result = failed(name, consumers, exc)
        logger.info("result: %s", result)
        results.append(result)
        write_json(path, args, results)  # after every run: an interrupted sweep keeps its data
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", default="1,5,10,20", help="comma-separated counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--targets", default="janus,janus-1loop", help="janus,janus-1loop,townhall")
    parser.add_argument("--out", default=str(OUT_DIR), help="directory for JSON and logs")
    parser.add_argument(
        "--townhall-command",
        default="",
        help="how to run the townhall CLI (default: this Python with townhall.cli.main)",
    )
    parser.add_argument("--simulcast", action="store_true",
                        help="the producer sends three VP8 layers (rids q, h, f) as a browser does")
    parser.add_argument("--rooms", type=int, default=1,
                        help="rooms on the server at once, each with a producer and the "
                        "consumer count of the run")
    parser.add_argument("--pace", action="store_true",
                        help="producers pace their video as a browser does (participants.Pacer)")
    parser.add_argument("--expect-layer", default="f",
                        help="with --simulcast: the layer each consumer should receive")
    parser.add_argument("--raw-consumers", action="store_true",
                        help="consumers count SRTP datagrams by their clear header, undecrypted")
    parser.add_argument("--twcc", action="store_true",
                        help="raw consumers accept transport-wide congestion control where "
                        "offered and send its feedback every 100 ms, as browsers do")
    parser.add_argument("--remb", type=int, default=0, metavar="BIT/S",
                        help="consumers send a REMB with this bitrate every second")
    parser.add_argument("--delay", action="store_true",
                        help="townhall measures how long it holds each packet and the report "
                        "gives p50/p99 (costs a system call per received packet)")
    parser.add_argument("--profile", choices=("python", "native", "perf", "perf-dwarf"),
                        default=None,
                        help="record the server during the window (townhall only; see "
                        "start_profile)")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="LABEL=SRC",
        help="target townhall:LABEL runs townhall from the src directory SRC (A/B comparisons)",
    )
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole list of targets this many times, interleaved")
    parser.add_argument("--no-uvloop", action="store_true", help="client on plain asyncio")
    parser.add_argument("--producer-twcc", action="store_true",
                        help="producers offer transport-wide sequence numbers on their video "
                        "and number it when the server accepts them, as browsers do (the "
                        "server then sends them transport feedback)")
    parser.add_argument("--pin", action="store_true",
                        help="the client on the first CPU and the server on the last, from "
                        "before the warm-up (see pin_both)")
    parser.add_argument("--together", action="store_true",
                        help="run the targets at once, each with its own producer and "
                        "consumers, and measure them over the same window (see run_together)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.together and (args.pin or args.profile):
        parser.error("--together measures several servers at once: no --pin or --profile")

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aioice", "aiortc", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    enter_own_network_namespace()
    path = Path(args.out) / f"sfu_forwarding-{time.strftime('%Y%m%dT%H%M%S')}.json"
    if importlib.util.find_spec("uvloop") is not None and not args.no_uvloop:
        import uvloop

        results = uvloop.run(main_async(args, path))
    else:
        results = asyncio.run(main_async(args, path))
    print(markdown(results))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
