"""Taking a closed connection apart, so that reference counting frees it.

An aiortc peer connection is a web of objects that refer to each other: each transceiver to its
sender and receiver and back through their transports, each finished task of a sender to its
coroutine and so to the sender, each transport to its ICE connection and its event handlers.
Closed, the whole web is garbage that only a full collection of the garbage collector finds, and
when a meeting ended, one full collection freed them all at once and held every room on the
server meanwhile: about 97,000 objects in 81–190 ms at 20 people, 364,000 in 0.6–0.7 s at 40
(``benchmarks.md``, *Leaving without a full collection*).

:func:`take_apart` empties the instance dictionaries of a closed peer connection's transceivers,
their senders, receivers and transports (not the ICE connection under them), which cuts every
one of those references: the objects are freed as soon as the last outside reference goes. The
peer connection itself keeps only its states (they still read ``closed``), an empty list of
transceivers and what a second close needs. A transport does this a while after it closed
(``transport.TAKE_APART_AFTER``), when nothing should touch those objects any more.
"""

from __future__ import annotations

from typing import Any

#: The peer connection's list of transceivers (private).
_TRANSCEIVERS = "_RTCPeerConnection__transceivers"
#: What a taken-apart peer connection keeps (private): its states, its closing (a second close
#: returns at once) and what its event emitter needs (with no handlers). The rest goes: its
#: descriptions, transports and the methods the transport set on it, which refer back to it.
_KEPT = ("_RTCPeerConnection__connectionState", "_RTCPeerConnection__iceConnectionState",
         "_RTCPeerConnection__iceGatheringState", "_RTCPeerConnection__signalingState",
         "_RTCPeerConnection__isClosed", "_lock", "_loop", "_waiting")
#: (class, attribute) pairs this module relies on, checked by the contract test.
PRIVATE_ATTRIBUTES = tuple(("aiortc.rtcpeerconnection.RTCPeerConnection", name)
                           for name in (_TRANSCEIVERS, *_KEPT))


def parts(pc: Any) -> list[Any]:
    """The objects under a peer connection that :func:`take_apart` empties, each once."""
    found: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        dtls = getattr(transceiver.receiver, "transport", None)
        ice = getattr(dtls, "transport", None)
        gatherer = getattr(ice, "iceGatherer", None)
        # not the ICE connection under the gatherer: the media sockets (``ice.IceMux``) keep
        # their own references to it and may still call it while they forget it
        for part in (transceiver, transceiver.sender, transceiver.receiver, dtls, ice, gatherer):
            if part is not None:
                found.setdefault(id(part), part)
    return list(found.values())


def take_apart(pc: Any) -> None:
    """Empty the closed ``pc``'s transceivers, senders, receivers and transports (see the
    module's description)."""
    if pc.connectionState != "closed":
        raise ValueError("only a closed peer connection is taken apart")
    emptied = parts(pc)
    for part in emptied:
        instance = getattr(part, "__dict__", None)
        if instance is not None:
            instance.clear()
    own = vars(pc)
    kept = {name: own[name] for name in _KEPT if name in own}
    own.clear()
    own.update(kept, _events={})
    own[_TRANSCEIVERS] = []
