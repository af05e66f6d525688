"""Split a townhall server's CPU into what its event loop was doing, from a ``perf`` recording
with DWARF call graphs (``--profile perf-dwarf``).

    python bench/perf_stages.py bench/out/profile-townhall-5.perf

``perf record -e cpu-clock`` samples the server only while it runs on a CPU, kernel included;
with DWARF unwinding each sample's stack reaches back through libpython and uvloop to the event
loop callback it belongs to, which frame-pointer stacks (``--profile perf``) do not. A sample's
stage is the first rule of ``STAGES`` whose symbols are all in its stack. Python frames have no
names here (only ``_PyEval_EvalFrameDefault``): within the socket's reader in C, Python is the
beat's periodic work riding on the datagram's wake-up, and what the reader hands to Python
(RTCP it does not read itself, STUN, DTLS). Recordings from before the socket was read in C
have uvloop's datagram callback instead, and their own stages.
"""

from __future__ import annotations

import argparse
import subprocess
from collections import Counter
from pathlib import Path

_DATAGRAM = "__pyx_f_6uvloop_4loop_12UDPTransport__on_receive"
#: the media socket's reader in C (``sfu/_read.c``), which reads, unprotects and fans out RTP
#: and rides the beat: the datagram callback since the socket is read in C
_READER = "media_read"

#: (stage, symbols that must all be in a sample's stack; ``~text``: any symbol containing
#: ``text``); the first match wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("RTP fan-out: sendmmsg (kernel)", (_READER, "fan_flush")),
    ("RTP fan-out: SRTP protect", (_READER, "fan_all", "srtp_protect")),
    ("RTP receive and fan-out in C: the rest", (_READER, "receive_packet")),
    ("RTCP: transport feedback read in C", (_READER, "twcc_estimate")),
    ("transport feedback to publishers, made and sent in C", (_READER, "send_feedback")),
    ("SRTP unprotect (RTP and RTCP)", (_READER, "~srtp_unprotect")),
    ("the beat's periodic work, riding on a datagram", (_READER, "PyObject_VectorcallMethod")),
    ("reader: Python (RTCP handling, STUN, DTLS)", (_READER, "_PyEval_EvalFrameDefault")),
    ("reader: recvmmsg", (_READER, "~recvmmsg")),
    ("reader: other", (_READER,)),
    ("RTP fan-out: sendmmsg (kernel)", (_DATAGRAM, "fan_flush")),
    ("RTP receive and fan-out in C: the rest", (_DATAGRAM, "fastsend_receive")),
    ("RTP fan-out in C (called from Python)", (_DATAGRAM, "fastsend_fanout")),
    ("RTCP: transport feedback read in C", (_DATAGRAM, "twcc_feedback")),
    ("RTCP: SRTP unprotect", (_DATAGRAM, "srtp_unprotect_rtcp")),
    ("RTP: SRTP unprotect", (_DATAGRAM, "srtp_unprotect")),
    ("datagram callback: Python (RTCP handling, RTP routing)",
     (_DATAGRAM, "_PyEval_EvalFrameDefault")),
    ("datagram callback: other", (_DATAGRAM,)),
    ("tasks: periodic work, signalling", ("__pyx_f_6uvloop_4loop_cb_idle_callback",)),
    ("timers", ("uv__run_timers",)),
    ("epoll: waiting for and waking on events", ("~epoll",)),
    ("uvloop: reading datagrams, making their objects", ("~recvmsg",)),
]


def stacks(path: Path) -> list[set[str]]:
    """The symbols of every sample's stack in a ``perf record`` file."""
    text = subprocess.run(["perf", "script", "-i", str(path), "-F", "ip,sym"], check=True,
                          capture_output=True, text=True).stdout
    samples: list[set[str]] = []
    current: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            if current:
                samples.append(current)
            current = set()
        elif len(parts) >= 2:
            current.add(parts[1].split("+")[0])
    if current:
        samples.append(current)
    return samples


def _has(stack: set[str], symbol: str) -> bool:
    if symbol.startswith("~"):
        return any(symbol[1:] in name for name in stack)
    return symbol in stack


def stage_of(stack: set[str]) -> str:
    for stage, symbols in STAGES:
        if all(_has(stack, symbol) for symbol in symbols):
            return stage
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="a perf.data file (perf record -g dwarf)")
    args = parser.parse_args()
    samples = stacks(args.recording)
    counts = Counter(stage_of(stack) for stack in samples)
    print(f"{len(samples)} samples\n")
    print("| stage | share of the server's CPU |")
    print("|---|---:|")
    for stage, count in counts.most_common():
        print(f"| {stage} | {100 * count / len(samples):.1f} % |")


if __name__ == "__main__":
    main()
