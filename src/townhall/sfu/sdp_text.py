"""SDP as text: the few edits aiortc's answers need (``audio_sdp``, ``simulcast_sdp``,
``twcc``, ``rejected_sdp``) split a description into its sections and join it again."""

from __future__ import annotations


def sections(sdp: str) -> list[list[str]]:
    """The session part, then each media section, as lists of lines without their endings."""
    parts: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts.append([])
        parts[-1].append(line)
    return parts


def join(parts: list[list[str]]) -> str:
    """``parts`` (as :func:`sections` gives them) as SDP again, every line ended by CRLF and
    empty lines left out."""
    return "".join(line + "\r\n" for part in parts for line in part if line)


def mid_of(section: list[str]) -> str:
    """A media section's mid ("" when it has none)."""
    return next((line[6:].strip() for line in section if line.startswith("a=mid:")), "")


def port_of(section: list[str]) -> str:
    """A media section's port, as its ``m=`` line gives it ("0": rejected or bundle-only)."""
    fields = section[0].split(" ")
    return fields[1] if len(fields) > 1 else ""
