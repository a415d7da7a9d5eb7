"""The ``POST /offer`` body, validated before any peer connection exists (PROTOCOL.md).

Everything a client sends is checked here and refused with a reason: the JSON shape, the mode, the face
selection, and the SDP itself (it must parse, carry ICE credentials and a DTLS fingerprint since signaling
is non-trickle, and offer exactly one video stream that can go both ways: the processed video comes back
on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODES = ("swap", "monitor", "both")
FACES = ("all", "largest")
SWAPPING_MODES = ("swap", "both")
# The defaults of the page, `swapwatch join` and an offer that does not say: one person at a camera is the
# usual session, and a bystander's face should not be swapped unless asked for.
DEFAULT_MODE = "swap"
DEFAULT_FACES = "largest"


class OfferError(ValueError):
    """A malformed offer; the message is the reason sent back with 400."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session does with its frames; changed later by websocket control messages."""

    mode: str = DEFAULT_MODE
    source: str | None = None
    faces: str = DEFAULT_FACES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OfferError(f"mode must be one of {', '.join(MODES)}")
        if self.faces not in FACES:
            raise OfferError(f"faces must be one of {', '.join(FACES)}")
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            raise OfferError("source must be a source id (a string from POST /sources) or null")
        if self.mode in SWAPPING_MODES and self.source is None:
            raise OfferError(f"mode {self.mode!r} needs a source (upload a face with POST /sources first)")

    @property
    def swaps(self) -> bool:
        return self.mode in SWAPPING_MODES

    @property
    def monitors(self) -> bool:
        return self.mode in ("monitor", "both")

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "source": self.source, "faces": self.faces}


@dataclass(frozen=True)
class OfferRequest:
    sdp: str
    settings: SessionSettings
    record: bool = False

    @classmethod
    def parse(cls, body: bytes, *, max_bytes: int) -> OfferRequest:
        if len(body) > max_bytes:
            raise OfferError(f"offer larger than {max_bytes} bytes")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OfferError(f"body is not JSON: {exc}") from None
        except RecursionError:  # the decoder's own depth limit: thousands of nested [ or {
            raise OfferError("body is JSON nested too deeply") from None
        if not isinstance(data, dict):
            raise OfferError("body must be a JSON object")
        sdp, kind = data.get("sdp"), data.get("type", "offer")
        if not isinstance(sdp, str) or not sdp.strip():
            raise OfferError("missing 'sdp' (a string)")
        if kind != "offer":
            raise OfferError("'type' must be 'offer'")
        mode = data.get("mode", "swap")
        faces = data.get("faces", DEFAULT_FACES)
        source = data.get("source")
        record = data.get("record", False)
        if not isinstance(mode, str) or not isinstance(faces, str):
            raise OfferError("'mode' and 'faces' must be strings")
        if source is not None and not isinstance(source, str):
            raise OfferError("'source' must be a source id (a string) or null")
        if not isinstance(record, bool):
            raise OfferError("'record' must be true or false")
        settings = SessionSettings(mode=mode, source=source or None, faces=faces)
        check_sdp(sdp)
        return cls(sdp=sdp, settings=settings, record=record)


def check_sdp(sdp: str) -> None:
    """Refuse SDP that cannot start a session, with the reason (aiortc's parser accepts almost anything)."""
    if not sdp.startswith("v=0"):
        raise OfferError("SDP must start with 'v=0'")
    from aiortc.sdp import SessionDescription  # here, so that the CLI's parsers can read the defaults cheaply

    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises whatever its line handlers hit: all of it means malformed
        raise OfferError(f"SDP does not parse: {type(exc).__name__}: {exc}") from None
    videos = [m for m in description.media if m.kind == "video"]
    if len(videos) != 1:
        raise OfferError(f"the offer must carry exactly one video stream (it has {len(videos)})")
    video = videos[0]
    if video.direction not in (None, "sendrecv"):
        raise OfferError(f"the video must be sendrecv (the processed video comes back on it), not {video.direction}")
    if not video.rtp.codecs:
        raise OfferError("the video offers no codec")
    if video.ice is None or not video.ice.usernameFragment or not video.ice.password:
        raise OfferError("the offer has no ICE credentials (ice-ufrag/ice-pwd)")
    if video.dtls is None or not video.dtls.fingerprints:
        raise OfferError("the offer has no DTLS fingerprint")
    _check_candidates([c for m in description.media for c in m.ice_candidates])


# The server sends ICE connectivity checks (STUN) to every candidate an offer lists: a few are all a browser
# needs (host, reflexive, relayed, per address family); more, or privileged ports, would let a client aim the
# server's checks at hosts and services of its choosing (issue 17).
MAX_CANDIDATES = 16
MIN_CANDIDATE_PORT = 1024


def _check_candidates(candidates: list) -> None:
    import ipaddress

    if len(candidates) > MAX_CANDIDATES:
        raise OfferError(f"the offer lists {len(candidates)} ICE candidates; at most {MAX_CANDIDATES} are accepted")
    for c in candidates:
        if str(c.protocol).lower() != "udp":
            continue  # aioice checks UDP candidates only (browsers list TCP "active" ones on port 9)
        if not MIN_CANDIDATE_PORT <= int(c.port) <= 65535:
            raise OfferError(f"ICE candidate port {c.port} refused (ports below {MIN_CANDIDATE_PORT} are not "
                             "checked)")
        try:
            address = ipaddress.ip_address(c.ip)
        except ValueError:
            continue  # a hostname (mDNS .local): resolved by aioice, it cannot be aimed at a port list
        if address.is_multicast or address.is_unspecified or (address.version == 4 and c.ip.endswith(".255")):
            raise OfferError(f"ICE candidate address {c.ip} refused (not a unicast address)")
