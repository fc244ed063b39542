"""Label values of the per-edge metrics: which service called which, in bounded sets.

An edge is (source service, destination service). The source of an inbound request is the
service in the caller's *verified* SPIFFE ID; the destination is the service the listener
is configured for (``[inbound] service`` or ``[[outbound]] service``). Every label holds
one kind of value — a service name or one of the fixed values below — never a SPIFFE ID,
an address or a path, so the number of series stays bounded by the services that hold an
SVID of the mesh.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["OTHER", "UNKNOWN", "service_of", "status_class"]

# No verified identity: a failed handshake, or a request refused before one was known.
UNKNOWN: Final = "unknown"
# A verified SPIFFE ID that does not follow `spiffe://TD/ns/NS/svc/SERVICE`.
OTHER: Final = "other"

# Segments as the SPIFFE-ID spec allows them (`meshgate.identity` parsed the ID already);
# fullmatch, so a trailing newline or a longer path is `other`.
_CONVENTION: Final = re.compile(r"spiffe://[a-z0-9._-]+/ns/[A-Za-z0-9._-]+/svc/([A-Za-z0-9._-]+)")


def service_of(spiffe_id: str | None) -> str:
    """The SERVICE of ``spiffe://TD/ns/NS/svc/SERVICE``; `OTHER` for any other shape and
    `UNKNOWN` for no identity. Trust domain and namespace are not kept (one label, one
    kind of value): two namespaces with a service of the same name share its series."""
    if not spiffe_id:
        return UNKNOWN
    match = _CONVENTION.fullmatch(spiffe_id)
    return match.group(1) if match else OTHER


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx`` for an HTTP status; ``none`` when no status was sent (tcp mode, or
    a connection that ended before a response); ``other`` for a number outside 100-599."""
    if status is None:
        return "none"
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return OTHER
