"""A network link the test shapes: a network namespace of the test's own, joined to this one by a
veth pair, whose traffic towards the namespace goes through a token bucket (``tc qdisc tbf``)
when the test narrows it. Needs root and iproute2; a test that cannot have it skips with the
reason printed, and fails on CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support import skip_or_fail


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def require_namespaces() -> None:
    """Skip (fail on CI) unless this process may make network namespaces and shape links."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        skip_or_fail("iproute2's ip and tc are not installed (apt-get install iproute2)")
    if os.geteuid() != 0:
        skip_or_fail("making a network namespace needs root")


class ShapedLink:
    """``namespace`` reaches this side's ``outside`` address over the link and is ``inside``
    itself. Made by :meth:`open`; :meth:`close` removes the namespace and the pair."""

    def __init__(self, tag: int) -> None:
        self.namespace = f"townhall-test-{tag}"
        self.device = f"th{tag}o"  # this side's end of the pair
        subnet = f"10.231.{tag % 250}"
        self.outside = f"{subnet}.1"
        self.inside = f"{subnet}.2"

    def open(self) -> ShapedLink:
        inner = self.device[:-1] + "i"
        self.close()  # what a killed run of this process id left behind
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self.device, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.namespace)
            _ip("addr", "add", f"{self.outside}/30", "dev", self.device)
            _ip("link", "set", self.device, "up")
            _ip("-n", self.namespace, "addr", "add", f"{self.inside}/30", "dev", inner)
            _ip("-n", self.namespace, "link", "set", inner, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def narrow(self, bits_per_second: int, queue_ms: int = 300) -> None:
        """Everything towards the namespace leaves at ``bits_per_second`` at most, through a
        queue of ``queue_ms`` at that rate; what does not fit in it is dropped, as on a
        congested link."""
        queue = max(3_000, bits_per_second // 8 * queue_ms // 1000)
        subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.device, "root", "tbf",
             "rate", f"{bits_per_second}bit", "burst", "3000", "limit", str(queue)],
            check=True, capture_output=True, timeout=10)

    def widen(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.device, "root"],
                       check=True, capture_output=True, timeout=10)

    def wrapper(self, program: str, directory: Path) -> Path:
        """A script that runs ``program`` with its arguments inside the namespace."""
        script = directory / f"in-{self.namespace}"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.namespace} {program} "$@"\n')
        script.chmod(0o755)
        return script

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.device], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)
