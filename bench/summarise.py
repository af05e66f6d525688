"""Medians of repeated sfu_forwarding runs, and each target against a reference target.

    python bench/summarise.py bench/out/sfu_forwarding-A.json [B.json ...] [--reference janus-1loop]

Runs of one configuration vary by ±15 % even on a quiet machine (the bandwidth estimates and
probes of each run differ); the median of several runs, taken in one command or in several with
the same options, is what the benchmarks report. Prints a Markdown table: per target and shape
(consumer count; rooms and pacing where a run had them), the median packets per server
CPU-second (with the range and the number of runs), the median server CPU %, and the median's
ratio to the reference target's median.

Then the same ratio run by run: each run against the reference's run of the same repeat (the
n-th of each in one file, which ``--repeat`` interleaves), and the median of those ratios. The
machine's speed drifts over minutes by more than the difference between two servers, and
runs of one repeat are minutes closer together than the runs of the medians above.
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
    for file, path in enumerate(paths):
        for result in json.loads(path.read_text())["results"]:
            if result.get("error"):
                continue
            shape = (result.get("rooms", 1), result["consumers"], result.get("paced", False))
            found = runs.setdefault((result["target"], shape), [])
            # which file and which of the target's runs of this shape in it: its repeat
            repeat = sum(1 for r in found if r["_file"] == file)
            found.append({**result, "_file": file, "_repeat": repeat})
    return runs


def label(shape: Shape) -> str:
    rooms, consumers, paced = shape
    text = f"{rooms} × {consumers}" if rooms > 1 else str(consumers)
    return text + ", paced" if paced else text


def _column(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def table(runs: dict[tuple[str, Shape], list[dict[str, float]]], reference: str) -> str:
    targets = list(dict.fromkeys(target for target, _ in runs))
    sizes = sorted({size for _, size in runs})
    # the threads' run time from schedstat, in ns, where every run has it (older runs do not)
    exact = all(r.get("packets_per_run_second") is not None
                for results in runs.values() for r in results)
    keys = ["packets_per_cpu_second", *(["packets_per_run_second"] if exact else [])]
    lines = [
        "| target | consumers | pkts per CPU-s, median (range, runs) | server CPU % "
        f"| × {reference} |" + (f" pkts per run-s (schedstat) | × {reference} |" if exact else ""),
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if exact else ""),
    ]
    for target in targets:
        for size in sizes:
            results = runs.get((target, size))
            if not results:
                continue
            cpu = statistics.median(r["server_cpu_percent"] for r in results)
            cells = []
            for key in keys:
                rates = _column(results, key)
                median = statistics.median(rates)
                base = _column(runs.get((reference, size), []), key)
                ratio = f"{median / statistics.median(base):.2f}" if base else ""
                cells.append(f"**{median:,.0f}** ({min(rates):,.0f}–{max(rates):,.0f}, "
                             f"{len(rates)})")
                cells.append(ratio)
            cells.insert(1, f"{cpu:.1f}")
            lines.append(f"| {target} | {label(size)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(runs: dict[tuple[str, Shape], list[dict[str, float]]], reference: str) -> str:
    """Each target's runs against the reference's run of the same repeat (see the module)."""
    exact = all(r.get("packets_per_run_second") is not None
                for results in runs.values() for r in results)
    key = "packets_per_run_second" if exact else "packets_per_cpu_second"
    lines = [f"| target | consumers | × {reference}, run by run | median |", "|---|---:|---|---:|"]
    for (target, size), results in runs.items():
        if target == reference:
            continue
        base = {(r["_file"], r["_repeat"]): r[key] for r in runs.get((reference, size), [])
                if r.get(key)}
        ratios = [r[key] / base[r["_file"], r["_repeat"]] for r in results
                  if r.get(key) is not None and (r["_file"], r["_repeat"]) in base]
        if ratios:
            lines.append(f"| {target} | {label(size)} | "
                         + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                         + f" | **{statistics.median(ratios):.2f}** |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--reference", default="janus-1loop")
    args = parser.parse_args()
    runs = load(args.files)
    print(table(runs, args.reference), end="")
    pairs = paired(runs, args.reference)
    if pairs:
        print("\n" + pairs, end="")


if __name__ == "__main__":
    main()
