"""Which headers go on to the next hop, and which reach the Cedar context. Pure.

Inbound, the app must learn its caller only from us: client-supplied identity headers are
dropped and `x-forwarded-client-cert` is set from the verified peer certificate (Envoy's
format). Hop-by-hop headers never cross a hop; we re-frame bodies ourselves.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, final

from meshgate.http.events import Headers
from meshgate.identity import SpiffeId
from meshgate.records import record

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "ForwardedRequest",
    "PeerCertificate",
    "context_headers",
    "forward_request_headers",
    "forward_response_headers",
    "is_valid_traceparent",
    "new_uuid",
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
@record(frozen=True, slots=True)
class ForwardedRequest:
    headers: Headers
    request_id: str  # the x-request-id sent on (kept or generated): for logs and error bodies
    traceparent: str | None = None  # the one valid traceparent sent on, if any


def new_uuid() -> str:
    """A random (version 4) UUID as text; a third of `str(uuid.uuid4())`'s cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# What `forward_request_headers` drops whatever the request says, for the default identity
# headers (built once, not per request).
_DEFAULT_DROP: Final = frozenset(DEFAULT_IDENTITY_HEADERS) | {"content-length"} | HOP_BY_HOP_HEADERS
_RESPONSE_DROP: Final = HOP_BY_HOP_HEADERS | {"content-length"}
# Names that need a second look in the one pass over the headers.
_NOTED: Final = frozenset({"connection", "traceparent", "tracestate", "x-request-id"})


def forward_request_headers(
    headers: Headers,
    *,
    our_id: SpiffeId | None,
    peer: PeerCertificate | None,
    identity_headers: Iterable[str] = DEFAULT_IDENTITY_HEADERS,
    new_request_id: Callable[[], str] = new_uuid,
    xfcc: str | None = None,
) -> ForwardedRequest:
    """Headers for the next hop of a request.

    Drops hop-by-hop headers (and those named in Connection), every identity header in
    `identity_headers` whoever sent it, invalid or repeated `traceparent` (and `tracestate`
    with it). Keeps one valid `x-request-id` or makes one. When `peer` is given (inbound),
    appends `x-forwarded-client-cert` from it (`xfcc`: its `xfcc_value`, computed once per
    connection by the caller); `our_id` is required then.
    Framing headers are dropped too: the serializer writes them from the parsed framing.
    """
    if identity_headers is DEFAULT_IDENTITY_HEADERS:
        drop = _DEFAULT_DROP
    else:
        drop = (
            frozenset(name.lower() for name in identity_headers)
            | {"content-length"}
            | HOP_BY_HOP_HEADERS
        )
    # One pass collects what decides the rest; most requests carry none of these names.
    noted = [(n, v) for n, v in headers if n in _NOTED]
    nominated: frozenset[str] = frozenset()
    trace_ok = keep_id = False
    request_ids: list[str] = []
    if noted:
        nominated = _nominated(tuple(noted))
        traceparents = [v for n, v in noted if n == "traceparent"]
        trace_ok = len(traceparents) == 1 and is_valid_traceparent(traceparents[0])
        request_ids = [v for n, v in noted if n == "x-request-id"]
        keep_id = len(request_ids) == 1 and _REQUEST_ID_RE.fullmatch(request_ids[0]) is not None
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name in drop or name.startswith("proxy-") or name in nominated:
            continue
        if name in _NOTED:
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
        out.append(
            ("x-forwarded-client-cert", xfcc if xfcc is not None else xfcc_value(our_id, peer))
        )
    traceparent = next((v for n, v in noted if n == "traceparent"), None) if trace_ok else None
    return ForwardedRequest(tuple(out), request_id, traceparent)


def forward_response_headers(headers: Headers) -> Headers:
    """Headers of an upstream response for the client: hop-by-hop and framing removed."""
    drop = _RESPONSE_DROP
    if any(n == "connection" for n, _ in headers):
        drop = drop | _nominated(headers)
    return tuple((n, v) for n, v in headers if n not in drop and not n.startswith("proxy-"))


def context_headers(headers: Headers, names: Iterable[str]) -> Mapping[str, str]:
    """The chosen headers for a Cedar context: lowercase name → value. Repeated headers are
    joined with ", " (RFC 9110 5.3); absent ones are absent (a policy tests `has`)."""
    wanted = frozenset(name.lower() for name in names)
    chosen: dict[str, str] = {}
    for name, value in headers:
        if name in wanted:
            chosen[name] = f"{chosen[name]}, {value}" if name in chosen else value
    return chosen
