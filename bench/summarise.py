"""Medians of repeated sfu_forwarding runs, and each target against a reference target.

    python bench/summarise.py bench/out/sfu_forwarding-A.json [B.json ...] [--reference janus-1loop]

Runs of one configuration vary by ±15 % even on a quiet machine (the bandwidth estimates and
probes of each run differ); the median of several runs, taken in one command or in several with
the same options, is what the benchmarks report. Prints a Markdown table: per target and shape
(consumer count; rooms and pacing where a run had them), the median packets per server
CPU-second (with the range and the number of runs), the median server CPU %, and the median's
ratio to the reference target's median.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

#: (rooms, consumers per room, paced)
Shape = tuple[int, int, bool]


def load(paths: list[Path]) -> dict[tuple[str, Shape], list[dict[str, float]]]:
    runs: dict[tuple[str, Shape], list[dict[str, float]]] = {}
    for path in paths:
        for result in json.loads(path.read_text())["results"]:
            if result.get("error"):
                continue
            shape = (result.get("rooms", 1), result["consumers"], result.get("paced", False))
            runs.setdefault((result["target"], shape), []).append(result)
    return runs


def label(shape: Shape) -> str:
    rooms, consumers, paced = shape
    text = f"{rooms} × {consumers}" if rooms > 1 else str(consumers)
    return text + ", paced" if paced else text


def table(runs: dict[tuple[str, Shape], list[dict[str, float]]], reference: str) -> str:
    targets = list(dict.fromkeys(target for target, _ in runs))
    sizes = sorted({size for _, size in runs})
    lines = [
        "| target | consumers | pkts per CPU-s, median (range, runs) | server CPU % "
        f"| × {reference} |",
        "|---|---:|---:|---:|---:|",
    ]
    for target in targets:
        for size in sizes:
            results = runs.get((target, size))
            if not results:
                continue
            rates = [r["packets_per_cpu_second"] for r in results]
            median = statistics.median(rates)
            cpu = statistics.median(r["server_cpu_percent"] for r in results)
            base = runs.get((reference, size))
            ratio = ""
            if base:
                reference_median = statistics.median(r["packets_per_cpu_second"] for r in base)
                ratio = f"{median / reference_median:.2f}"
            lines.append(f"| {target} | {label(size)} | **{median:,.0f}** ({min(rates):,.0f}–"
                         f"{max(rates):,.0f}, {len(rates)}) | {cpu:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--reference", default="janus-1loop")
    args = parser.parse_args()
    print(table(load(args.files), args.reference), end="")


if __name__ == "__main__":
    main()
