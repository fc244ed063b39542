"""Header names the sidecar owns, and look-alikes of them. Pure.

WSGI, CGI and many frameworks turn a header name into `HTTP_` + upper case with `-` as `_`,
so `Transfer_Encoding` and `Transfer-Encoding` reach an app as the same variable (Django's
CVE-2015-0219 class). A look-alike of a header we own would let a client frame, route or
identify a request one way for the sidecar and another way for the app. So a request
header whose name, read with `_` as `-` (names are already lower-case), equals a name we
own but is not spelled that way is refused with 400, as is a second copy of a header a
policy reads (the Cedar context would see the copies joined, `user, admin`, and a
`forbid ... == "admin"` would not fire) and a look-alike of one.
Fails closed: every refusal raises `HttpError(400, ...)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from meshgate.http.errors import HttpError
from meshgate.http.events import Headers
from meshgate.http.proxy_headers import UNVOUCHED_HEADERS, UNVOUCHED_PREFIXES

__all__ = ["OWNED_HEADERS", "OWNED_PREFIXES", "check_look_alikes", "check_policy_headers"]

# Framing, routing and persistence; identities the sidecar sets; the forwarding headers
# it strips or sets (`proxy_headers.py`).
OWNED_HEADERS: Final = (
    frozenset(
        {
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "x-forwarded-client-cert",
            "x-spiffe-id",
            "x-request-id",
        }
    )
    | UNVOUCHED_HEADERS
)
OWNED_PREFIXES: Final = ("proxy-", *UNVOUCHED_PREFIXES)


def _owned(dashed: str) -> bool:
    return dashed in OWNED_HEADERS or dashed.startswith(OWNED_PREFIXES)


def check_look_alikes(headers: Headers) -> None:
    """Refuse a header spelled with `_` that reads as one the sidecar owns. The caller may
    skip the call when no `_` occurs in the header block (the common case)."""
    for name, _ in headers:
        if "_" in name and _owned(name.replace("_", "-")):
            raise HttpError(400, f"header {name[:40]!r} looks like {name.replace('_', '-')[:40]!r}")


def check_policy_headers(headers: Headers, names: Iterable[str]) -> None:
    """Refuse a second copy, or a look-alike (`_` for `-` or the reverse), of any header in
    `names` (the ones the loaded policies read)."""
    spelled = {name.replace("_", "-"): name for name in names}
    if not spelled:
        return
    seen: set[str] = set()
    for name, _ in headers:
        wanted = spelled.get(name.replace("_", "-") if "_" in name else name)
        if wanted is None:
            continue
        if name != wanted:
            raise HttpError(
                400, f"header {name[:40]!r} looks like {wanted[:40]!r}, which a policy reads"
            )
        if name in seen:
            raise HttpError(400, f"header {name[:40]!r} sent more than once; a policy reads it")
        seen.add(name)
