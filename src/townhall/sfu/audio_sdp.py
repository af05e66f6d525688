"""The audio parts of townhall's SDP that aiortc does not write: Opus FEC and DTX, and RED.

aiortc offers and answers Opus without any ``a=fmtp`` and knows nothing of RED, so the transport
completes each description it makes before applying it (``Transport.answer`` and
``Transport.offer``); aiortc keeps the added lines in its local description. Text in, text out:

- every audio section with Opus gets ``useinbandfec=1;usedtx=1`` in Opus's ``a=fmtp``: in an
  answer to a publisher this asks the browser to send in-band FEC (a lost frame is rebuilt from
  the next one) and to use DTX (a packet every 400 ms instead of every 20 ms in silence); in an
  offer to a receiving page it says the server's Opus streams may carry both;
- in an answer, where the publisher offered ``red/48000/2`` over its Opus, RED is accepted and
  put first, which is what makes a browser send it (RFC 2198, one redundant frame per packet);
- in an offer, RED is listed after Opus so that a page that can receive it says so; the SFU then
  forwards RED to it as it came, and the primary Opus frame alone to consumers without RED
  (``sfu/red.py``).
"""

from __future__ import annotations

import re
from typing import Any

from townhall.sfu import sdp_text

OPUS_PARAMETERS = (("useinbandfec", "1"), ("usedtx", "1"))
#: Payload types tried for RED in an offer, Chrome's usual 63 first.
RED_PAYLOAD_TYPES = (63, *range(62, 34, -1))

_RTPMAP = re.compile(r"a=rtpmap:(\d+) ([^/\s]+)/(\d+)")
_FMTP = re.compile(r"a=fmtp:(\d+) ?(.*)")


def _rtpmap(section: list[str], name: str) -> int | None:
    for line in section:
        match = _RTPMAP.match(line)
        if match and match.group(2).lower() == name:
            return int(match.group(1))
    return None


def _fmtp(section: list[str], payload_type: int) -> tuple[int, str] | None:
    for n, line in enumerate(section):
        match = _FMTP.match(line)
        if match and int(match.group(1)) == payload_type:
            return n, match.group(2)
    return None


def _is_audio(section: list[str]) -> bool:
    parts = section[0].split()
    return parts[0] == "m=audio" and len(parts) > 1 and parts[1] != "0"


def _with_opus_parameters(section: list[str]) -> int | None:
    """Add FEC and DTX to Opus's fmtp in ``section``; returns Opus's payload type."""
    opus = _rtpmap(section, "opus")
    if opus is None:
        return None
    found = _fmtp(section, opus)
    parameters: dict[str, str] = {}
    for item in (found[1].split(";") if found else []):
        key, _, value = item.strip().partition("=")
        if key:
            parameters[key] = value
    parameters.update(OPUS_PARAMETERS)
    line = f"a=fmtp:{opus} " + ";".join(f"{k}={v}" if v else k for k, v in parameters.items())
    if found is not None:
        section[found[0]] = line
    else:
        at = next(n for n, text in enumerate(section) if text.startswith(f"a=rtpmap:{opus} "))
        section.insert(at + 1, line)
    return opus


def _red_over(section: list[str], opus: int) -> int | None:
    """The payload type of ``red/48000/2`` in ``section`` if its blocks are that Opus."""
    for line in section:
        match = _RTPMAP.match(line)
        if match and match.group(2).lower() == "red" and match.group(3) == "48000":
            red = int(match.group(1))
            found = _fmtp(section, red)
            if found is not None and all(p == str(opus) for p in found[1].strip().split("/")):
                return red
    return None


def _add_red(section: list[str], red: int, opus: int, first: bool) -> None:
    parts = section[0].split()
    formats = [f for f in parts[3:] if f != str(red)]
    formats.insert(0 if first else formats.index(str(opus)) + 1, str(red))
    section[0] = " ".join(parts[:3] + formats)
    at = next(n for n, text in enumerate(section) if text.startswith(f"a=rtpmap:{opus} "))
    section[at:at] = [f"a=rtpmap:{red} red/48000/2", f"a=fmtp:{red} {opus}/{opus}"]


def complete_answer(offer: str, answer: str, red: bool = True) -> str:
    """The server's answer to a publisher, with Opus FEC/DTX and (if ``red``) RED accepted."""
    offered = sdp_text.sections(offer)[1:]
    sections = sdp_text.sections(answer)
    for n, section in enumerate(sections[1:]):
        if not _is_audio(section):
            continue
        opus = _with_opus_parameters(section)
        if opus is None or not red or n >= len(offered):
            continue
        offered_red = _red_over(offered[n], opus)
        if offered_red is not None and _rtpmap(offered[n], "opus") == opus:
            _add_red(section, offered_red, opus, first=True)
    return sdp_text.join(sections)


def complete_offer(offer: str, red: bool = True) -> str:
    """The server's offer to a receiving page, with Opus FEC/DTX and (if ``red``) RED offered."""
    sections = sdp_text.sections(offer)
    used = {int(f) for section in sections[1:] for f in section[0].split()[3:] if f.isdigit()}
    free = next((pt for pt in RED_PAYLOAD_TYPES if pt not in used), None)
    for section in sections[1:]:
        if not _is_audio(section):
            continue
        opus = _with_opus_parameters(section)
        if opus is not None and red and free is not None:
            _add_red(section, free, opus, first=False)
    return sdp_text.join(sections)


def red_payload_type(media: Any, primary: int) -> int | None:
    """The RED payload type negotiated over ``primary`` in a parsed (aiortc) media section."""
    for codec in media.rtp.codecs:
        if codec.mimeType.lower() != "audio/red":
            continue
        fmtp = "/".join(str(k) for k in codec.parameters)
        if fmtp and all(p == str(primary) for p in fmtp.split("/")):
            return int(codec.payloadType)
    return None
