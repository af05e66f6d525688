"""The floor under the forwarding benchmark: what one wake-up and one copy cost on this machine
in a forwarder that does nothing else.

    python bench/wake_floor.py [--consumers 1,5,20] [--seconds 20] [--repeat 2]

For each number of consumers N, minimal forwarders get the arrival pattern of the forwarding
benchmark's single room (``sfu_forwarding.py``, one producer, N consumers) on loopback:

- ``c``: ``wake_floor.c``, built here with gcc: epoll, ``recvmmsg``, one ``sendmmsg`` per
  batch; it reads the payload type and nothing else;
- ``c+srtp``: the same loop with SRTP, in a process of its own that sets up pylibsrtp's
  sessions (the libsrtp the SFU uses) and calls it through ctypes: it unprotects each RTP
  packet and protects each copy in a session per consumer, as an SFU does;
- ``python``: uvloop and a ``DatagramProtocol`` whose ``datagram_received`` sends the copies
  with ``sendto``, one call per copy; nothing else.

Each 1/30 s a video frame arrives as a burst of datagrams on three layers (2 or 3 on the top
layer, which is forwarded, 1 on the middle, 1 on the lowest every other frame, which are not);
audio every 20 ms (forwarded); and each consumer's RTCP, transport feedback every 100 ms and a
REMB every second, read and not forwarded. That is about 180 datagrams a second in at one
consumer (the forwarding benchmark has about 210 with the RTCP this leaves out) and N × 125
copies out. A sink counts the copies.

Reported per run: the forwarder's CPU from ``/proc/PID/schedstat`` (nanoseconds on the CPU),
its voluntary context switches (each one a sleep and a wake-up), copies that reached the sink,
and from those copies per CPU-second (the forwarding benchmark's figure) and µs of CPU per
wake-up. None of them does the rest of an SFU's work; the difference between ``c`` and
``python`` is the interpreter's and the event loop's part of a wake-up, and ``c+srtp`` is what
the kernel's part and SRTP leave for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
FPS = 30
AUDIO_INTERVAL = 0.02
FEEDBACK_INTERVAL = 0.1
REMB_INTERVAL = 1.0
RTCP = b"\x00" + bytes(59)
#: The floor's SRTP key (master key and salt), as ``wake_floor.c`` has it.
KEY = bytes(range(30))
FORWARDERS = ("c", "c+srtp", "python")
#: (payload type, payload bytes) of each stream: the top layer and audio are forwarded (96),
#: the middle and lowest layers not (97).
STREAMS = {"f": (96, 1100), "h": (97, 900), "q": (97, 500), "audio": (96, 100)}


@dataclass
class Result:
    forwarder: str
    consumers: int
    seconds: float
    datagrams_in: int
    copies: int
    cpu_seconds: float
    wakeups: int
    copies_per_cpu_second: int
    cpu_us_per_wakeup: float
    load_average_1min: float


def build(directory: Path) -> tuple[Path, Path]:
    """The C forwarder as a program (``c``) and as a library (``c+srtp``, run by
    :func:`forward_srtp`)."""
    source = str(BENCH_DIR / "wake_floor.c")
    program, library = directory / "wake_floor", directory / "wake_floor.so"
    subprocess.run(["gcc", "-O2", "-o", str(program), source], check=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-DWAKE_FLOOR_LIBRARY", "-o",
                    str(library), source], check=True)
    return program, library


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def wakeups(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches")


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.copies = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.copies += 1


class _Sender:
    """The producer's RTP (SRTP-protected for ``c+srtp``) and the consumers' RTCP stand-ins."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], srtp: bool) -> None:
        self.sock = sock
        self.address = address
        self.sequences = dict.fromkeys(STREAMS, 0)
        self.ssrcs = {stream: 1000 + i for i, stream in enumerate(STREAMS)}
        self.protect: Callable[[bytes], bytes] | None = None
        if srtp:
            import pylibsrtp

            self.protect = pylibsrtp.Session(pylibsrtp.Policy(
                key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)).protect
        self.sent = 0

    def rtp(self, stream: str) -> None:
        payload_type, size = STREAMS[stream]
        sequence = self.sequences[stream] = (self.sequences[stream] + 1) & 0xFFFF
        packet = struct.pack("!BBHII", 0x80, payload_type, sequence, sequence * 3000,
                             self.ssrcs[stream]) + bytes(size)
        self.send(packet if self.protect is None else self.protect(packet))

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.address)
        self.sent += 1


async def _send(sender: _Sender, consumers: int, until: float) -> int:
    """Send the arrival pattern until the loop's clock reaches ``until``; returns datagrams."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    # (due, kind, period) for each source; kinds: frame, audio, feedback of consumer i, remb
    events: list[tuple[float, str, float]] = [(start, "frame", 1 / FPS),
                                              (start, "audio", AUDIO_INTERVAL)]
    for i in range(consumers):
        events.append((start + FEEDBACK_INTERVAL * i / consumers, "feedback", FEEDBACK_INTERVAL))
        events.append((start + REMB_INTERVAL * i / consumers, "remb", REMB_INTERVAL))
    frame = 0
    while True:
        events.sort()
        due, kind, period = events[0]
        if due >= until:
            return sender.sent
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        events[0] = (due + period, kind, period)
        if kind == "frame":
            for _ in range(2 + frame % 2):
                sender.rtp("f")
            sender.rtp("h")
            if frame % 2:
                sender.rtp("q")
            frame += 1
        elif kind == "audio":
            sender.rtp("audio")
        else:
            sender.send(RTCP)


async def run_one(forwarder: str, binaries: tuple[Path, Path], consumers: int,
                  seconds: float, warmup: float) -> Result:
    loop = asyncio.get_running_loop()
    sink_transport, sink = await loop.create_datagram_endpoint(
        _Sink, local_addr=("127.0.0.1", 0))
    sink_port = sink_transport.get_extra_info("sockname")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    program, library = binaries
    if forwarder == "c":
        command = [str(program), str(port), str(sink_port), str(consumers)]
    elif forwarder == "c+srtp":
        command = [sys.executable, __file__, "--forward-srtp", str(port), str(sink_port),
                   str(consumers), str(library)]
    else:
        command = [sys.executable, __file__, "--forward", str(port), str(sink_port),
                   str(consumers)]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    try:
        assert process.stdout is not None
        if (await asyncio.wait_for(process.stdout.readline(), 10)).strip() != b"ready":
            raise RuntimeError(f"{forwarder} forwarder did not start")
        begin = loop.time()
        source = _Sender(sender, ("127.0.0.1", port), forwarder == "c+srtp")
        sending = asyncio.ensure_future(
            _send(source, consumers, begin + warmup + seconds + 1))
        await asyncio.sleep(warmup)
        cpu0, wake0, copies0, t0 = cpu_ns(process.pid), wakeups(process.pid), sink.copies, \
            time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wake1, copies1, t1 = cpu_ns(process.pid), wakeups(process.pid), sink.copies, \
            time.monotonic()
        sent = await sending
        cpu = (cpu1 - cpu0) / 1e9
        wakes = wake1 - wake0
        copies = copies1 - copies0
        return Result(forwarder=forwarder, consumers=consumers, seconds=round(t1 - t0, 2),
                      datagrams_in=sent, copies=copies, cpu_seconds=round(cpu, 4),
                      wakeups=wakes,
                      copies_per_cpu_second=round(copies / cpu) if cpu > 0 else 0,
                      cpu_us_per_wakeup=round(cpu * 1e6 / wakes, 1) if wakes else 0.0,
                      load_average_1min=os.getloadavg()[0])
    finally:
        sender.close()
        if process.returncode is None:
            process.kill()
        await process.wait()
        sink_transport.close()


class _Forward(asyncio.DatagramProtocol):
    def __init__(self, sink: tuple[str, int], copies: int) -> None:
        self.sink = sink
        self.copies = range(copies)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's, not a subclass of asyncio.DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[0] and data[1] & 0x7F == 96 and self.transport is not None:
            sendto, sink = self.transport.sendto, self.sink
            for _ in self.copies:
                sendto(data, sink)


async def forward(port: int, sink_port: int, copies: int) -> None:
    """The Python forwarder (runs in its own process)."""
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Forward(("127.0.0.1", sink_port), copies),
                                        local_addr=("127.0.0.1", port))
    print("ready", flush=True)
    await loop.create_future()


def forward_srtp(port: int, sink_port: int, copies: int, library: str) -> None:
    """The ``c+srtp`` forwarder (runs in its own process): ``wake_floor.c``'s loop with
    libsrtp from pylibsrtp's binding, one inbound session and a session per copy."""
    import ctypes

    import pylibsrtp
    from pylibsrtp._binding import ffi, lib

    from townhall.sfu.native import NativeSend

    def function(name: str) -> int:
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))

    rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    tx = [pylibsrtp.Session(pylibsrtp.Policy(key=KEY,
                                             ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
          for _ in range(copies)]
    sessions = (ctypes.c_void_p * copies)(*(NativeSend.session(t) for t in tx))
    floor = ctypes.CDLL(library)
    floor.wake_floor.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    sys.exit(floor.wake_floor(port, sink_port, copies, function("srtp_unprotect"),
                              function("srtp_protect"), NativeSend.session(rx),
                              ctypes.addressof(sessions)))


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as directory:
        binaries = build(Path(directory))
        for _ in range(args.repeat):
            for consumers in args.consumers:
                for forwarder in FORWARDERS:
                    result = await run_one(forwarder, binaries, consumers, args.seconds,
                                           args.warmup)
                    print(json.dumps(asdict(result)), flush=True)
                    results.append(result)
    return results


def main() -> None:
    import uvloop

    if len(sys.argv) == 6 and sys.argv[1] == "--forward-srtp":
        forward_srtp(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--forward":
        uvloop.run(forward(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", default="1,5,20",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = parser.parse_args()
    results = uvloop.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"wake_floor-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({
        "command": "python bench/wake_floor.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "results": [asdict(r) for r in results],
    }, indent=1) + "\n")
    print("\n| forwarder | consumers | copies per CPU-second (median) | µs of CPU per wake-up "
          "(median) | wake-ups per second |\n|---|---:|---:|---:|---:|")
    for consumers in args.consumers:
        for forwarder in dict.fromkeys(r.forwarder for r in results):
            runs = [r for r in results if r.forwarder == forwarder and r.consumers == consumers]
            print(f"| {forwarder} | {consumers} "
                  f"| {statistics.median(r.copies_per_cpu_second for r in runs):,.0f} "
                  f"| {statistics.median(r.cpu_us_per_wakeup for r in runs):.1f} "
                  f"| {statistics.median(r.wakeups / r.seconds for r in runs):.0f} |")


if __name__ == "__main__":
    main()
