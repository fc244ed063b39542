"""Forwarding headers on the inbound hop: what the app may believe about where a request
came from. Pure.

A client can write anything into `Forwarded`, `X-Forwarded-For`/`-Proto`/`-Host`, other
proxies' internal headers (`X-Envoy-*`, `l5d-*`, `X-Real-IP`) or headers that make a
framework route or re-method a request (`X-Original-URL`, `X-Rewrite-URL`,
`X-HTTP-Method-Override`): the app would act on claims no one checked, or on a path or
method other than the one Cedar decided. What the mesh vouches for is the verified
connection: the peer's address and that it came over mTLS. Per inbound listener
(`inbound.forwarded_headers`):
- "set" (default): drop every such header the client sent, then set `X-Forwarded-For`,
  `X-Forwarded-Proto: https` and `Forwarded: for=...;proto=https` from the connection;
- "strip": drop them and set nothing;
- "append": keep the client's `X-Forwarded-For` and `Forwarded` chains (only when every
  peer is a proxy you trust to write them) and append this hop; drop the rest.
The Host header is replaced by its canonical form (`meshgate/http/host.py`) in every mode.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final, Literal

from meshgate.http.events import Headers

__all__ = [
    "FORWARDING_MODES",
    "UNVOUCHED_HEADERS",
    "UNVOUCHED_PREFIXES",
    "ForwardingMode",
    "inbound_proxy_headers",
]

ForwardingMode = Literal["set", "strip", "append"]
FORWARDING_MODES: Final = ("set", "strip", "append")

UNVOUCHED_HEADERS: Final = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-forwarded-for",
        "x-original-url",
        "x-rewrite-url",
        "x-original-host",
        "x-host",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
# `x-forwarded-client-cert` starts with `x-forwarded-` too; forwarding.py sets it, after
# dropping the client's copy, and it must survive this pass.
UNVOUCHED_PREFIXES: Final = ("x-forwarded-", "x-envoy-", "l5d-")
_KEPT_BY_APPEND: Final = frozenset({"forwarded", "x-forwarded-for"})
_OURS: Final = "x-forwarded-client-cert"


def _unvouched(name: str) -> bool:
    return name != _OURS and (name in UNVOUCHED_HEADERS or name.startswith(UNVOUCHED_PREFIXES))


@functools.lru_cache(maxsize=1024)  # one value per peer address
def _forwarded_for(source_ip: str) -> str:
    """RFC 7239 node: IPv6 in brackets and quotes; anything not an IP is `unknown`."""
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return "unknown"
    return f'"[{address}]"' if address.version == 6 else str(address)


def inbound_proxy_headers(
    headers: Headers, *, mode: ForwardingMode, source_ip: str, host: str
) -> Headers:
    """`headers` (already past `forward_request_headers`) with the forwarding policy of
    `mode` applied and Host set to `host` (dropped when `host` is "")."""
    out: list[tuple[str, str]] = []
    chains: dict[str, list[str]] = {}
    for name, value in headers:
        if name == "host":
            continue
        if _unvouched(name):
            if mode == "append" and name in _KEPT_BY_APPEND:
                chains.setdefault(name, []).append(value)
            continue
        out.append((name, value))
    if host:
        out.insert(0, ("host", host))
    if mode == "strip":
        return tuple(out)
    node = _forwarded_for(source_ip)
    xff_ip = node.strip('"[]') if node != "unknown" else "unknown"
    xff = [*chains.get("x-forwarded-for", []), xff_ip]
    forwarded = [*chains.get("forwarded", []), f"for={node};proto=https"]
    out.append(("x-forwarded-for", ", ".join(xff)))
    out.append(("x-forwarded-proto", "https"))
    out.append(("forwarded", ", ".join(forwarded)))
    return tuple(out)
