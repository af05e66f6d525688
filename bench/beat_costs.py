"""What each part of the server's beat costs, in CPU time of the event loop's thread.

    python bench/beat_costs.py --rev HEAD --consumers 1 -- --simulcast --remb 2500000 \\
        --raw-consumers --twcc --producer-twcc
    python bench/beat_costs.py --rev HEAD --participants 20 -- --producer-twcc

Makes a tree of the server at ``--rev`` (``git archive``), adds clock reads around the beat's
parts there (never in the working tree: they cost a system call each), builds its native piece
and runs ``bench/sfu_forwarding.py`` on it, one ``townhall:costs`` run per consumer count (or,
with ``--participants``, ``bench/meeting.py``, a run per meeting size), with the arguments
after ``--``. The server writes its totals every ``DUMP_EVERY`` beats; the table
is the difference between the first and the last of them inside the benchmark's measured window
(which the benchmark notes, ``window.py``), per beat, in microseconds:

- ``beat``: the beat's wake-ups, all of it: the runner's (``Beat._woke``, and ``Beat._go_on``
  where work that gave the loop back goes on), and where the routers' tick rides the datagrams
  (from a86d430) the ticks' (``Wakeups._run_ticks``), which then count the beats;
- ``runner``: the runner's wake-ups alone (every beat before a86d430, only beats with work
  after), and in them ``beat: sleep`` (the next wake-up's timer) and ``beat: watch`` (the
  loop watch);
- each periodic work by name (``tick``, ``allocation``, ``reports``, ``silence``, and the work
  the tick hands over, ``audio-only narrowing`` and ``probing``), its share of the beats it
  ran on spread over every beat;
- in the tick: ``tick: keyframes``, ``tick: feedback`` (the transport feedback to
  publishers, built, protected and sent) and in it ``tick: feedback build``, ``tick: audio``
  and in it ``audio: voices``, ``audio: speaker``, ``audio: selection``.

The clock is ``time.thread_time_ns`` (CPU time, so a wait for a CPU does not count); each read
is a system call of about a microsecond, which the figures include.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from window import ENVIRONMENT, windows

ROOT = Path(__file__).resolve().parent.parent
#: The server appends its totals to its file every this many beats.
DUMP_EVERY = 20

_COSTS = '''"""Totals of the clock reads ``bench/beat_costs.py`` adds to this tree."""
import os
import time

totals: dict[str, int] = {}
clock = time.thread_time_ns
#: Whether the routers' tick rides the datagrams (then the beats are counted there).
ticked = False


def add(name: str, nanoseconds: int, count: bool = False) -> None:
    totals[name] = totals.get(name, 0) + nanoseconds
    if count:
        totals[name + "#"] = totals.get(name + "#", 0) + 1


def beat_done() -> None:
    if totals.get("beat#", 0) % DUMP_EVERY == 0:
        with open(os.path.join(os.environ["ENVIRONMENT"], f"{os.getpid()}.txt"), "a") as f:
            f.write(repr({**dict(sorted(totals.items())), "at": time.monotonic()}) + "\\n")
'''



def _sleep_patch(comment: str) -> tuple[str, str, str]:
    """The runner's next wake-up's timer and the loop watch, measured: ``comment`` is the one
    on the line that asks for the next wake-up, which changed."""
    watch = """\
        if self.watch is not None:
            try:
                self.watch(loop.time() - owed)
            except Exception:
                logger.exception("the beat's watch failed")
"""
    return ("townhall/beat.py", f"        self._sleep(loop)  # {comment}\n{watch}", f"""\
        from townhall import _beat_costs as costs
        start = costs.clock()
        self._sleep(loop)
        slept = costs.clock()
{watch}\
        costs.add("beat: sleep", slept - start)
        costs.add("beat: watch", costs.clock() - slept)
""")


#: (file, text there, what it becomes): each text must be found exactly once, except where
#: two patches of a file are alternatives (``ALTERNATIVES``): then one of them.
PATCHES: list[tuple[str, str, str]] = [
    ("townhall/beat.py", """\
    def _woke(self, owed: float) -> None:
        self._sleeping = None
""", """\
    def _woke(self, owed: float) -> None:
        from townhall import _beat_costs as costs
        start = costs.clock()
        try:
            self._woke_measured(owed)
        finally:
            spent = costs.clock() - start
            # where the tick rides the datagrams, the beats are counted there
            costs.add("beat", spent, count=not costs.ticked)
            costs.add("runner", spent, count=True)
            if not costs.ticked:
                costs.beat_done()

    def _woke_measured(self, owed: float) -> None:
        self._sleeping = None
"""),
    _sleep_patch("first: a hold from here on makes the next wake-up late"),
    # (from a86d430: the beat's work taken before the runner sleeps until the next beat with work)
    _sleep_patch("before the work: a hold from here on makes the next wake-up late"),
    # (from a86d430: the routers' tick rides the datagrams, with no runner's wake-up; before,
    # it was the runner's work named "tick")
    ("townhall/beat.py", """\
    def _run_ticks(self, now: float) -> None:
""", """\
    def _run_ticks(self, now: float) -> None:
        from townhall import _beat_costs as costs
        costs.ticked = True
        start = costs.clock()
        try:
            self._run_ticks_measured(now)
        finally:
            spent = costs.clock() - start
            costs.add("beat", spent, count=True)
            costs.add("tick", spent, count=True)
            costs.beat_done()

    def _run_ticks_measured(self, now: float) -> None:
"""),
    ("townhall/sfu/router.py", """\
            periodic.every(TICK_INTERVAL, self._tick, f"{name}: tick"),
""", """\
            periodic.every(TICK_INTERVAL, self._tick, f"{name}: tick"),
"""),
    ("townhall/beat.py", """\
                try:
                    steps = entry.work()
                except Exception:
                    logger.exception("%s: periodic work failed", entry.name)
                    continue
""", """\
                from townhall import _beat_costs as costs
                start = costs.clock()
                try:
                    steps = entry.work()
                except Exception:
                    logger.exception("%s: periodic work failed", entry.name)
                    continue
                finally:
                    costs.add(entry.name.rpartition(": ")[2], costs.clock() - start, True)
"""),
    ("townhall/beat.py", """\
            key, entry, steps = self._steps
            try:
                next(steps)
            except StopIteration:
                self._steps = None
                continue
            except Exception:
                logger.exception("%s: periodic work failed", entry.name)
                self._steps = None
                continue
""", """\
            key, entry, steps = self._steps
            from townhall import _beat_costs as costs
            start = costs.clock()
            try:
                next(steps)
            except StopIteration:
                self._steps = None
                continue
            except Exception:
                logger.exception("%s: periodic work failed", entry.name)
                self._steps = None
                continue
            finally:
                costs.add(entry.name.rpartition(": ")[2], costs.clock() - start)
"""),
    ("townhall/beat.py", """\
    def _go_on(self) -> None:
        \"\"\"After a turn of the loop: work stopped meanwhile takes no further step.\"\"\"
""", """\
    def _go_on(self) -> None:
        from townhall import _beat_costs as costs
        start = costs.clock()
        try:
            self._go_on_measured()
        finally:
            costs.add("beat", costs.clock() - start)

    def _go_on_measured(self) -> None:
        \"\"\"After a turn of the loop: work stopped meanwhile takes no further step.\"\"\"
"""),
    ("townhall/sfu/router.py", """\
        for producer in self.producers.values():
            if producer.keyframe_pending:
                producer.flush_keyframe_request()
        self._send_transport_feedback()
        activity = self._audio.tick(self.producers.values())
""", """\
        from townhall import _beat_costs as costs
        start = costs.clock()
        for producer in self.producers.values():
            if producer.keyframe_pending:
                producer.flush_keyframe_request()
        costs.add("tick: keyframes", costs.clock() - start)
        start = costs.clock()
        self._send_transport_feedback()
        costs.add("tick: feedback", costs.clock() - start)
        start = costs.clock()
        activity = self._audio.tick(self.producers.values())
        costs.add("tick: audio", costs.clock() - start)
"""),
    ("townhall/sfu/router.py", """\
            packets = arrivals.feedback(now, producer.track.rtcp_ssrc, media)
""", """\
            from townhall import _beat_costs as costs
            start = costs.clock()
            packets = arrivals.feedback(now, producer.track.rtcp_ssrc, media)
            costs.add("tick: feedback build", costs.clock() - start)
"""),
    # (every commit but 1c896df, whose batching was not kept: each packet sent as it is built)
    ("townhall/sfu/router.py", """\
            for packet in arrivals.feedback(now, producer.track.rtcp_ssrc, media):
                transport.send_rtcp(packet)
""", """\
            from townhall import _beat_costs as costs
            start = costs.clock()
            packets = arrivals.feedback(now, producer.track.rtcp_ssrc, media)
            costs.add("tick: feedback build", costs.clock() - start)
            for packet in packets:
                transport.send_rtcp(packet)
"""),
    # (from b7bb540: the SSRCs in a function of their own, and only where the socket's reader
    # does not send the feedback)
    ("townhall/sfu/router.py", """\
            for packet in arrivals.feedback(now, *_feedback_ssrcs(state)):
                transport.send_rtcp(packet)
""", """\
            from townhall import _beat_costs as costs
            start = costs.clock()
            packets = arrivals.feedback(now, *_feedback_ssrcs(state))
            costs.add("tick: feedback build", costs.clock() - start)
            for packet in packets:
                transport.send_rtcp(packet)
"""),
    ("townhall/sfu/audio_activity.py", """\
        self.voices.update(scores, self._clock())
        dominant = self.speaker.update(by_owner)
        forwarded = self.selection.update(scores.keys(), self.voices)
        self.narrow.update(forwarded, self.voices)  # the loudest of the loudest
""", """\
        from townhall import _beat_costs as costs
        start = costs.clock()
        self.voices.update(scores, self._clock())
        voiced = costs.clock()
        dominant = self.speaker.update(by_owner)
        spoken = costs.clock()
        forwarded = self.selection.update(scores.keys(), self.voices)
        self.narrow.update(forwarded, self.voices)  # the loudest of the loudest
        costs.add("audio: voices", voiced - start)
        costs.add("audio: speaker", spoken - voiced)
        costs.add("audio: selection", costs.clock() - spoken)
"""),
]


#: Groups of indices in ``PATCHES`` of which exactly one must fit (the code changed between
#: commits): the feedback to publishers (built and sent at once, built then sent together, or
#: left to the socket's reader where it reads the publisher); the runner's sleep; the tick as
#: the runner's work or riding the datagrams.
ALTERNATIVES = [
    tuple(i for i, (_, old, _) in enumerate(PATCHES) if "arrivals.feedback(" in old),
    tuple(i for i, (_, old, _) in enumerate(PATCHES) if "self._sleep(loop)  #" in old),
    tuple(i for i, (_, old, _) in enumerate(PATCHES)
          if "def _run_ticks" in old or "TICK_INTERVAL, self._tick" in old),
]


def make_tree(rev: str, directory: Path) -> Path:
    """The server's source at ``rev`` under ``directory``, measured, its native piece built;
    returns its ``src``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    src = directory / "src"
    (src / "townhall" / "_beat_costs.py").write_text(
        _COSTS.replace("DUMP_EVERY", str(DUMP_EVERY)).replace("ENVIRONMENT", ENVIRONMENT))
    for group in [(i,) for i in range(len(PATCHES)) if not any(i in a for a in ALTERNATIVES)] \
            + ALTERNATIVES:
        fitting = [PATCHES[i] for i in group
                   if (src / PATCHES[i][0]).read_text().count(PATCHES[i][1]) == 1]
        if len(fitting) != 1:
            texts = "\n".join(PATCHES[i][1] for i in group)
            raise SystemExit(f"{rev}: no longer has the text to measure at:\n{texts}")
        name, old, new = fitting[0]
        path = src / name
        path.write_text(path.read_text().replace(old, new))
        compile(path.read_text(), str(path), "exec")  # a patch that breaks the file fails here
    subprocess.run([sys.executable, "-c", "from townhall.sfu import native; native.build()"],
                   check=True, env={**os.environ, "PYTHONPATH": str(src)})
    return src


def per_beat(path: Path, within: tuple[float, float] | None
             ) -> dict[str, tuple[float, int]]:
    """From one server's dumps: each part's microseconds per beat between the first and the
    last dump ``within`` the benchmark's window (None: over the second half of the run), and
    how many times it ran there."""
    dumps = [ast.literal_eval(line) for line in path.read_text().splitlines()]
    if within is not None:
        dumps = [dump for dump in dumps if within[0] <= dump["at"] <= within[1]]
    else:
        dumps = dumps[len(dumps) // 2:]
    if len(dumps) < 2:
        raise SystemExit(f"{path}: fewer than two dumps in the window; run longer")
    first, last = dumps[0], dumps[-1]
    beats = last["beat#"] - first["beat#"]
    return {
        name: ((value - first.get(name, 0)) / beats / 1000,
               last.get(name + "#", last["beat#"]) - first.get(name + "#", first["beat#"]))
        for name, value in last.items() if not name.endswith("#") and name != "at"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to measure")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--consumers", default="1",
                       help="comma-separated consumer counts, a sfu_forwarding run each")
    sizes.add_argument("--participants",
                       help="comma-separated meeting sizes, a meeting run each")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="after --: more arguments for the benchmark")
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.participants:
        bench, flag, counts, what = "meeting.py", "--participants", args.participants, "people"
    else:
        bench, flag, counts, what = "sfu_forwarding.py", "--consumers", args.consumers, \
            "consumer(s)"
    with tempfile.TemporaryDirectory(prefix="beat-costs-") as temporary:
        src = make_tree(args.rev, Path(temporary))
        for count in counts.split(","):
            out = Path(temporary) / f"costs-{count}"
            out.mkdir()
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / bench), flag,
                 count, "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                 "--targets", "townhall:costs", "--variant", f"costs={src}",
                 "--out", str(out), *rest],
                check=True, env={**os.environ, ENVIRONMENT: str(out)})
            dumps = sorted(out.glob("[0-9]*.txt"))
            if len(dumps) != 1:
                raise SystemExit(f"expected one server's dumps in {out}, found {len(dumps)}")
            noted = windows(out)
            print(f"\n{args.rev}, {count} {what}: microseconds of CPU per beat "
                  f"({'in the window' if noted else 'second half of the run'})\n")
            print("| part | µs per beat | runs |\n|---|---:|---:|")
            for name, (micro, runs) in per_beat(dumps[0], noted[-1] if noted else None).items():
                print(f"| {name} | {micro:.1f} | {runs} |")


if __name__ == "__main__":
    main()
