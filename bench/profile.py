"""Summarise a py-spy raw profile (collapsed stacks) of the server's packet path.

    python bench/profile.py bench/out/profile-townhall-20.txt [--top 25]

py-spy's ``--format raw`` writes one line per distinct stack: ``frame;frame;...;leaf COUNT``,
each frame ``function (file:line)``. Printed: the share of samples per stage of the packet path
(the stage of a sample is the innermost frame that names one, see ``STAGES``), then the functions
with the most samples of their own (leaf frames) and the most samples in all (inclusive).
Samples are taken only while the process runs Python or native code (py-spy leaves out idle
threads), so shares are shares of the server's busy time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: (stage, pattern on a frame): the innermost matching frame gives a sample its stage.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("socket send (sendto)", re.compile(r"sendto|\bsend \(|sendmsg|_fast_send")),
    ("SRTP protect", re.compile(r"protect(_rtcp)? \(|srtp_protect")),
    ("SRTP unprotect", re.compile(r"unprotect|srtp_unprotect")),
    ("header rewrite", re.compile(r"rewrite|_pack|pack_into")),
    ("consumer (per-consumer logic)", re.compile(r"consumer\.py|simulcast|layer")),
    ("producer (cache, levels, fan-out)", re.compile(r"producer\.py|packet_cache|sequence\.py")),
    ("router (demux, counters)", re.compile(r"router\.py|rtp\.py|rtcp\.py")),
    ("receive (socket, ICE demux)", re.compile(r"datagram_received|ice\.py|deliver|route")),
    ("rooms / signalling", re.compile(r"rooms/|server/|aiohttp|json")),
    ("aiortc / aioice internals", re.compile(r"aiortc|aioice")),
    ("event loop", re.compile(r"asyncio|uvloop|run_forever|_run_once|events\.py")),
]


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def load(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if pattern.search(frame):
                return stage
    return "other"


def _name(frame: str) -> str:
    """``function (file:line)`` without the line: samples of one function add up."""
    return re.sub(r":\d+\)$", ")", frame)


def summarise(stacks: Counter[str], top: int = 20) -> str:
    total = sum(stacks.values())
    if not total:
        return "no samples\n"
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = _frames(stack)
        stages[stage_of(frames)] += count
        if frames:
            own[_name(frames[-1])] += count
        for name in {_name(f) for f in frames}:
            inclusive[name] += count
    lines = [f"{total} samples", "", "| stage | share |", "|---|---:|"]
    lines += [f"| {stage} | {100 * n / total:.1f} % |" for stage, n in stages.most_common()]
    lines += ["", "| own samples | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{name}` |"
              for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(summarise(load(args.profile), args.top), end="")


if __name__ == "__main__":
    main()
