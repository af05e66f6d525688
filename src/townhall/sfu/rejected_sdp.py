"""Media sections an offer rejects stay rejected in the answer (RFC 8829 5.3.1, RFC 9143 7.3.3).

When a page stops a transceiver (a screen share ends) its next offer keeps the media section
with port 0 and leaves its mid out of the BUNDLE group. aiortc answers such a section with a
live port, ``a=inactive``, and its mid in the BUNDLE group, and Chromium refuses that answer ("A
BUNDLE group in answer contains a MID that was not in the offered group"): the publishing
connection is then stuck with an offer nobody answered, and the page can publish nothing new on
it. So the answer's section gets port 0 too, and the BUNDLE group loses its mid.
"""

from __future__ import annotations

from townhall.sfu import sdp_text

_BUNDLE = "a=group:BUNDLE"


def _bundled(line: str) -> list[str]:
    """The mids of a BUNDLE group line."""
    return line[len(_BUNDLE):].split()


def rejected_as_offered(offer: str, answer: str) -> str:
    """``answer`` with port 0, and out of its BUNDLE group, every media section the offer
    rejected (port 0, its mid in no BUNDLE group); unchanged when the offer rejected none."""
    session, *offered = sdp_text.sections(offer)
    bundled = {mid for line in session if line.startswith(_BUNDLE) for mid in _bundled(line)}
    # port 0 with its mid in the group is "bundle-only" (RFC 9143 7.2.1), not rejected
    rejected = [index for index, section in enumerate(offered)
                if sdp_text.port_of(section) == "0" and sdp_text.mid_of(section) not in bundled]
    if not rejected:
        return answer
    parts = sdp_text.sections(answer)
    mids: set[str] = set()
    for index in rejected:
        if index + 1 >= len(parts):
            continue
        section = parts[index + 1]
        kind, _, rest = section[0].partition(" ")
        section[0] = " ".join([kind, "0", *rest.split(" ")[1:]])
        mids.add(sdp_text.mid_of(section))
    kept_lines: list[str] = []
    for line in parts[0]:
        if line.startswith(_BUNDLE):
            kept = [mid for mid in _bundled(line) if mid not in mids]
            if not kept:
                continue  # nothing left to bundle
            line = " ".join([_BUNDLE, *kept])
        kept_lines.append(line)
    parts[0] = kept_lines
    return sdp_text.join(parts)
