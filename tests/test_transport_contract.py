"""aiortc's private attributes that ``sfu/transport.py`` and ``sfu/teardown.py`` rely on are
still there.

An aiortc upgrade that renames one fails here, by name, instead of silently losing media.
"""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from pylibsrtp import Policy, Session

from townhall.sfu import teardown, transport


@pytest.mark.parametrize(("path", "attribute"),
                         transport.PRIVATE_ATTRIBUTES + teardown.PRIVATE_ATTRIBUTES)
async def test_each_private_attribute_the_transport_uses_exists(path: str, attribute: str) -> None:
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("audio")
        dtls = transceiver.receiver.transport
        # Many are set in __init__, so they are looked up on live objects.
        instances = {
            "aiortc.rtcdtlstransport.RTCDtlsTransport": dtls,
            "aiortc.rtcicetransport.RTCIceTransport": dtls.transport,
            "aioice.ice.Connection": dtls.transport._connection,
            "aiortc.rtcrtpsender.RTCRtpSender": transceiver.sender,
            "aiortc.rtcrtpreceiver.RTCRtpReceiver": transceiver.receiver,
            "aiortc.rtcpeerconnection.RTCPeerConnection": pc,
            "pylibsrtp.Session": Session(Policy(key=bytes(30), ssrc_type=Policy.SSRC_ANY_INBOUND)),
        }
        owner = instances[path]
        assert f"{type(owner).__module__}.{type(owner).__name__}" == path
        assert hasattr(owner, attribute), (
            f"aiortc changed: {path}.{attribute} is gone; update sfu/transport.py")
    finally:
        await pc.close()
