"""Simulcast in SDP (RFC 8851 ``a=rid``, RFC 8853 ``a=simulcast``), which aiortc ignores.

A browser publishing with simulcast offers, in its video section::

    a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=rid:q send
    a=rid:h send
    a=rid:f send
    a=simulcast:send q;h;f

and lists no SSRCs: each layer's packets carry their rid in the header extension. aiortc's answer
leaves all of that out (and the browser then sends one layer), so the SFU completes the answer's
section with the extension, ``a=rid:<id> recv`` for each layer and ``a=simulcast:recv ...``.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.sfu import sdp_text

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
#: Most simulcast layers accepted from one track.
MAX_LAYERS = 4
_MAX_RID_LENGTH = 32


@dataclass(frozen=True, slots=True)
class OfferedSimulcast:
    """What one media section offers: layers by rid (lowest first) and the extension ids."""

    rids: tuple[str, ...]
    rid_extension: int
    repaired_rid_extension: int | None


def _simulcast_in(lines: list[str]) -> OfferedSimulcast | None:
    send_rids: list[str] = []
    listed: list[str] = []
    extensions: dict[str, int] = {}
    for line in lines:
        if line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send":
                send_rids.append(parts[0])
        elif line.startswith("a=simulcast:"):
            parts = line[12:].split()
            # "send <alternatives>" possibly followed by "recv <alternatives>"
            for direction, value in zip(parts[::2], parts[1::2], strict=False):
                if direction == "send":
                    listed = [alternative.split(",")[0].lstrip("~")
                              for alternative in value.split(";")]
        elif line.startswith("a=extmap:"):
            parts = line[9:].split()
            if len(parts) >= 2:
                try:
                    extensions[parts[1]] = int(parts[0].split("/")[0])
                except ValueError:
                    continue
    rid_extension = extensions.get(RID_URI)
    rids = tuple(rid for rid in listed if rid in send_rids and 0 < len(rid) <= _MAX_RID_LENGTH
                 and rid.isascii() and rid.replace("-", "").replace("_", "").isalnum())
    if rid_extension is None or not 1 < len(rids) <= MAX_LAYERS or len(set(rids)) != len(rids):
        return None
    return OfferedSimulcast(rids, rid_extension, extensions.get(REPAIRED_RID_URI))


def offered(offer: str) -> list[OfferedSimulcast | None]:
    """Per media section of ``offer``: its simulcast layers, or None for a single stream."""
    return [_simulcast_in(lines) for lines in sdp_text.sections(offer)[1:]]


def complete_answer(answer: str, accepted: list[OfferedSimulcast | None]) -> str:
    """``answer`` with simulcast accepted in each section whose entry in ``accepted`` is set."""
    out: list[str] = []
    index = -1
    wanted: OfferedSimulcast | None = None

    def finish_section() -> None:
        if wanted is None:
            return
        out.append(f"a=extmap:{wanted.rid_extension} {RID_URI}")
        if wanted.repaired_rid_extension is not None:
            out.append(f"a=extmap:{wanted.repaired_rid_extension} {REPAIRED_RID_URI}")
        out.extend(f"a=rid:{rid} recv" for rid in wanted.rids)
        out.append("a=simulcast:recv " + ";".join(wanted.rids))

    for line in answer.splitlines():
        if line.startswith("m="):
            finish_section()
            index += 1
            wanted = accepted[index] if index < len(accepted) else None
        out.append(line)
    finish_section()
    return "\r\n".join(out) + "\r\n"
