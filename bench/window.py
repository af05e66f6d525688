"""Where a benchmark's measured window lies, for tools that measure inside the server.

``beat_costs.py`` runs a benchmark with ``BEAT_COSTS_OUT`` set to a directory; the benchmark
then appends its window's start and end (``time.monotonic``, one clock for every process on
the machine) to ``window.txt`` there, so the server's own figures can be taken over the same
stretch of time.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The directory to note the window in (unset: nothing is written).
ENVIRONMENT = "BEAT_COSTS_OUT"


def note_window(start: float, end: float) -> None:
    """Note a measured window, from ``start`` to ``end`` on ``time.monotonic``'s clock."""
    directory = os.environ.get(ENVIRONMENT)
    if directory:
        with open(Path(directory) / "window.txt", "a") as file:
            file.write(f"{start} {end}\n")


def windows(directory: Path) -> list[tuple[float, float]]:
    """The windows noted in ``directory``, in the order they were."""
    path = directory / "window.txt"
    if not path.exists():
        return []
    return [(float(start), float(end))
            for start, end in (line.split() for line in path.read_text().splitlines())]
