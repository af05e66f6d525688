"""Russian ↔ Ukrainian with Apertium (Debian's ``apertium-rus-ukr``).

The stock mode (``apertium rus-ukr``, /usr/share/apertium/modes/rus-ukr.mode) runs

    lt-proc -w automorf | cg-proc -w rlx | apertium-tagger -g prob | apertium-pretransfer
    | lt-proc -b autobil | lrx-proc -m autolex | apertium-transfer -b t1x | apertium-interchunk t2x
    | apertium-postchunk t3x | lt-proc -g autogen | lt-proc -p autopgen

and on Debian 12 its tagger step (``apertium-tagger -g rus-ukr.prob``) crashes, so the stock
command prints nothing. This module runs the same steps without the statistical tagger: the
constraint grammar (``cg-proc``) already disambiguates, and ``cg-proc -1 -n`` keeps the first
reading left and drops the surface form — exactly the tagger's output format. The final generator
runs with ``-n`` so unknown words are not marked (no ``*``, ``#`` or ``@`` in captions).

One rule of the pair's data (``det`` + noun in rus-ukr.t1x) writes its two words without the blank
between them ("Першийпитання"), so the steps run as two pipelines, transfer and generation, and
``repair_blanks`` puts a space between two adjacent words in between.

Every step runs with ``-z`` (flush on NUL), as one long-lived shell pipeline per direction: a
caption is written as escaped text ending in NUL, and its translation is read up to the next NUL
(a few milliseconds, against ~70 ms to start the ten processes per call). The pipeline is started
on first use, restarted once if it dies, and guarded by a lock, so several speakers' threads can
share it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import selectors
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

from townhall.errors import CaptionsError

logger = logging.getLogger(__name__)

DATA = Path("/usr/share/apertium/apertium-rus-ukr")
TOOLS = ("lt-proc", "cg-proc", "apertium-pretransfer", "lrx-proc", "apertium-transfer",
         "apertium-interchunk", "apertium-postchunk")
PAIRS = frozenset({("ru", "uk"), ("uk", "ru")})
_CODES = {"ru": "rus", "uk": "ukr"}
_RESERVED = re.compile(r"([\\\[\]^$/<>@{}*#~+|])")
_ESCAPED = re.compile(r"\\(.)")
_MARK = re.compile(r"(?<!\\)[*#@](?=\w)")


def steps(direction: str, data: Path = DATA) -> tuple[list[list[str]], list[list[str]]]:
    """The commands of one direction (``rus-ukr`` or ``ukr-rus``): transfer, then generation."""
    d = f"{data}/{direction}"
    t = f"{data}/apertium-rus-ukr.{direction}"
    transfer = [
        ["lt-proc", "-z", "-w", f"{d}.automorf.bin"],
        ["cg-proc", "-z", "-w", "-1", "-n", f"{d}.rlx.bin"],
        ["apertium-pretransfer", "-z"],
        ["lt-proc", "-z", "-b", f"{d}.autobil.bin"],
        ["lrx-proc", "-z", "-m", f"{d}.autolex.bin"],
        ["apertium-transfer", "-z", "-b", f"{t}.t1x", f"{d}.t1x.bin"],
        ["apertium-interchunk", "-z", f"{t}.t2x", f"{d}.t2x.bin"],
        ["apertium-postchunk", "-z", f"{t}.t3x", f"{d}.t3x.bin"],
    ]
    generation = [
        ["lt-proc", "-z", "-n", f"{d}.autogen.bin"],
        ["lt-proc", "-z", "-p", f"{d}.autopgen.bin"],
    ]
    return transfer, generation


_PUNCTUATION = frozenset({"sent", "cm", "lpar", "rpar", "lquot", "rquot", "guio", "apos", "quot",
                          "percent", "lquest", "lexclam"})
_UNIT_END = re.compile(r"(?<!\\)\$\^")


def repair_blanks(stream: str) -> str:
    """Put a blank between two adjacent lexical units that are both words (see the docstring)."""
    parts = _UNIT_END.split(stream)
    out = parts[0]
    for previous, following in itertools.pairwise(parts):
        last = _first_tag(previous[previous.rfind("^") + 1 :])
        first = _first_tag(following)
        blank = last not in _PUNCTUATION and first not in _PUNCTUATION
        out += ("$ ^" if blank else "$^") + following
    return out


def _first_tag(unit: str) -> str:
    match = re.search(r"<([^>]*)>", unit)
    return match[1] if match else ""


def escape(text: str) -> str:
    """Plain text → Apertium's stream format (what ``apertium-destxt`` does, on one line)."""
    flat = " ".join(text.replace("\0", " ").split())
    return _RESERVED.sub(r"\\\1", flat)


def unescape(stream: str) -> str:
    """Apertium's stream format → plain text, without unknown-word marks."""
    return _ESCAPED.sub(r"\1", _MARK.sub("", stream)).strip()


class Apertium:
    name = "apertium"

    def __init__(self, data: Path = DATA, timeout: float = 5.0) -> None:
        self._data = data
        self._timeout = timeout
        self._directions: dict[str, _Direction] = {}
        self._lock = threading.Lock()

    @staticmethod
    def available(data: Path = DATA) -> str | None:
        """None when the pair can run here, else why not."""
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            return "missing " + ", ".join(missing) + " (Debian packages apertium, cg3, " \
                "apertium-lex-tools, lttoolbox)"
        if not (data / "rus-ukr.automorf.bin").is_file():
            return f"missing {data} (Debian package apertium-rus-ukr)"
        return None

    def pairs(self) -> frozenset[tuple[str, str]]:
        return PAIRS

    def translate(self, text: str, source: str, target: str) -> str:
        if (source, target) not in PAIRS:
            raise CaptionsError(f"Apertium does not translate {source} → {target}")
        escaped = escape(text)
        if not escaped:
            return ""
        direction = f"{_CODES[source]}-{_CODES[target]}"
        try:
            return unescape(self._direction(direction).translate(escaped))
        except CaptionsError as exc:
            logger.warning("Apertium %s failed (%s); restarting it", direction, exc)
            self._direction(direction, restart=True)
            return unescape(self._direction(direction).translate(escaped))

    def _direction(self, direction: str, restart: bool = False) -> _Direction:
        with self._lock:
            current = self._directions.get(direction)
            if current is not None and restart:
                current.close()
                current = None
            if current is None:
                transfer, generation = steps(direction, self._data)
                current = _Direction(
                    _Pipeline(transfer, self._timeout), _Pipeline(generation, self._timeout)
                )
                self._directions[direction] = current
            return current

    def close(self) -> None:
        with self._lock:
            directions = list(self._directions.values())
            self._directions.clear()
        for direction in directions:
            direction.close()


class _Direction:
    def __init__(self, transfer: _Pipeline, generation: _Pipeline) -> None:
        self._transfer = transfer
        self._generation = generation

    def translate(self, escaped: str) -> str:
        return self._generation.run(repair_blanks(self._transfer.run(escaped)))

    def close(self) -> None:
        self._transfer.close()
        self._generation.close()


class _Pipeline:
    """One long-lived shell pipeline of NUL-flushing Apertium steps."""

    def __init__(self, commands: list[list[str]], timeout: float) -> None:
        line = " | ".join(" ".join(shlex.quote(a) for a in command) for command in commands)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            ["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def run(self, stream: str) -> str:
        with self._lock:
            process = self._process
            assert process.stdin is not None and process.stdout is not None
            try:
                ending = b"\0" if stream.endswith("\n") else b"\n\0"  # lt-proc wants a line
                process.stdin.write(stream.encode("utf-8") + ending)
                process.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise CaptionsError(f"Apertium pipeline stopped: {exc}") from exc
            out = bytearray()
            fd = process.stdout.fileno()
            with selectors.DefaultSelector() as selector:
                selector.register(fd, selectors.EVENT_READ)
                while not out.endswith(b"\0"):
                    if not selector.select(self._timeout):
                        raise CaptionsError("Apertium pipeline did not answer in time")
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise CaptionsError("Apertium pipeline stopped")
                    out += chunk
            return out.rstrip(b"\0").decode("utf-8", errors="replace")

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
