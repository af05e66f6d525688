"""A producer's recent packets by sequence number, to answer NACKs without asking the producer."""

from __future__ import annotations


class PacketCache:
    """A ring of the last ``size`` packets (a power of two), indexed by 16-bit sequence number."""

    __slots__ = ("_mask", "_packets", "_sequences")

    def __init__(self, size: int = 512) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("packet cache size must be a power of two")
        self._mask = size - 1
        self._packets: list[bytes | None] = [None] * size
        self._sequences: list[int] = [-1] * size

    def store(self, sequence: int, packet: bytes) -> None:
        index = sequence & self._mask
        self._packets[index] = packet
        self._sequences[index] = sequence

    def get(self, sequence: int) -> bytes | None:
        index = sequence & self._mask
        if self._sequences[index] != sequence:
            return None
        return self._packets[index]

    def clear(self) -> None:
        self._packets = [None] * len(self._packets)
        self._sequences = [-1] * len(self._sequences)
