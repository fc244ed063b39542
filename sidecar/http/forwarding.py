"""Which headers go on to the next hop, and which reach the Cedar context. Pure.

Inbound, the app must learn its caller only from us: client-supplied identity headers are
dropped and `x-forwarded-client-cert` is set from the verified peer certificate (Envoy's
format). Hop-by-hop headers never cross a hop; we re-frame bodies ourselves.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, final

from mesh_ca.identity import SpiffeId
from sidecar.http.events import Headers

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "ForwardedRequest",
    "PeerCertificate",
    "context_headers",
    "forward_request_headers",
    "forward_response_headers",
    "is_valid_traceparent",
    "xfcc_value",
]

HOP_BY_HOP_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
DEFAULT_IDENTITY_HEADERS: Final = ("x-forwarded-client-cert", "x-spiffe-id")
# A Connection header may name headers to drop, but never the ones that route the request.
_NEVER_NOMINATED: Final = frozenset({"host"})
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?"
)
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _is_hop_by_hop(name: str, nominated: frozenset[str]) -> bool:
    return name in HOP_BY_HOP_HEADERS or name.startswith("proxy-") or name in nominated


def _nominated(headers: Headers) -> frozenset[str]:
    tokens = {
        item.strip().lower() for n, v in headers if n == "connection" for item in v.split(",")
    }
    return frozenset(tokens - _NEVER_NOMINATED - {""})


def is_valid_traceparent(value: str) -> bool:
    """W3C Trace Context `traceparent`: version 00 exactly, later versions may extend it."""
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None:
        return False
    version, trace_id, parent_id, _flags, rest = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return False
    return not (version == "00" and rest is not None)


@final
@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified peer of an inbound mTLS connection: its SPIFFE ID and leaf (DER)."""

    spiffe_id: SpiffeId
    leaf_der: bytes


def xfcc_value(our_id: SpiffeId, peer: PeerCertificate) -> str:
    """Envoy's `x-forwarded-client-cert` element: By=<us>;Hash=<sha256 of leaf DER>;URI=<peer>.
    SPIFFE IDs hold no `,;="` (strict parse), so no quoting is needed."""
    digest = hashlib.sha256(peer.leaf_der).hexdigest()
    return f"By={our_id};Hash={digest};URI={peer.spiffe_id}"


@final
@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    headers: Headers
    request_id: str  # the x-request-id sent on (kept or generated): for logs and error bodies


def _new_uuid() -> str:
    return str(uuid.uuid4())


def forward_request_headers(
    headers: Headers,
    *,
    our_id: SpiffeId | None,
    peer: PeerCertificate | None,
    identity_headers: Iterable[str] = DEFAULT_IDENTITY_HEADERS,
    new_request_id: Callable[[], str] = _new_uuid,
) -> ForwardedRequest:
    """Headers for the next hop of a request.

    Drops hop-by-hop headers (and those named in Connection), every identity header in
    `identity_headers` whoever sent it, invalid or repeated `traceparent` (and `tracestate`
    with it). Keeps one valid `x-request-id` or makes one. When `peer` is given (inbound),
    appends `x-forwarded-client-cert` from it; `our_id` is required then.
    Framing headers are dropped too: the serializer writes them from the parsed framing.
    """
    drop = frozenset(name.lower() for name in identity_headers) | {"content-length"}
    nominated = _nominated(headers)
    traceparents = [v for n, v in headers if n == "traceparent"]
    trace_ok = len(traceparents) == 1 and is_valid_traceparent(traceparents[0])
    request_ids = [v for n, v in headers if n == "x-request-id"]
    keep_id = len(request_ids) == 1 and _REQUEST_ID_RE.fullmatch(request_ids[0]) is not None
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name in drop or _is_hop_by_hop(name, nominated):
            continue
        if name in ("traceparent", "tracestate") and not trace_ok:
            continue
        if name == "x-request-id" and not keep_id:
            continue
        out.append((name, value))
    request_id = request_ids[0] if keep_id else new_request_id()
    if not keep_id:
        if not _REQUEST_ID_RE.fullmatch(request_id):
            raise ValueError("new_request_id() returned an unusable request id")
        out.append(("x-request-id", request_id))
    if peer is not None:
        if our_id is None:
            raise ValueError("our_id is required to set x-forwarded-client-cert")
        out.append(("x-forwarded-client-cert", xfcc_value(our_id, peer)))
    return ForwardedRequest(tuple(out), request_id)


def forward_response_headers(headers: Headers) -> Headers:
    """Headers of an upstream response for the client: hop-by-hop and framing removed."""
    nominated = _nominated(headers)
    return tuple(
        (n, v) for n, v in headers if n != "content-length" and not _is_hop_by_hop(n, nominated)
    )


def context_headers(headers: Headers, names: Iterable[str]) -> Mapping[str, str]:
    """The chosen headers for a Cedar context: lowercase name → value. Repeated headers are
    joined with ", " (RFC 9110 5.3); absent ones are absent (a policy tests `has`)."""
    wanted = frozenset(name.lower() for name in names)
    chosen: dict[str, str] = {}
    for name, value in headers:
        if name in wanted:
            chosen[name] = f"{chosen[name]}, {value}" if name in chosen else value
    return chosen
