"""The canonical Host of a request: the one value policies see and the app receives. Pure.

Decided once, here (docs/policies.md, "What a policy sees"):
- lower-cased; one trailing dot removed (`internal.svc.` is `internal.svc`), two refused;
- the port is removed when it is a default port (80, 443) or one of the listener's own
  ports, since the request reached us either way; any other port is kept, as a number
  without leading zeros (`host:0080` is `host`);
- a registered name is dot-separated labels of letters, digits, `-` and `_` (at most 63
  bytes each, 253 in all); an IP literal is IPv4 dotted-decimal or a bracketed IPv6
  address (written back in its compressed form). Anything else — percent-escapes,
  sub-delimiters, userinfo, an empty host or port, a port over 65535 — is refused with 400;
- a Host that disagrees with the authority of an absolute-form target is refused (the
  reader refuses absolute-form targets today; the rule holds for any caller that accepts one).
Fails closed: every refusal raises `HttpError(400, ...)`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from meshgate.http.errors import HttpError

__all__ = ["DEFAULT_PORTS", "canonical_host"]

DEFAULT_PORTS: Final = frozenset({80, 443})
_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_IPV4_RE: Final = re.compile(r"[0-9.]+")


def _bad(reason: str) -> HttpError:
    return HttpError(400, reason)


def _split(authority: str) -> tuple[str, str | None]:
    """`host[:port]` → (host, port text or None); IPv6 literals keep their brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _bad("malformed Host: unclosed IPv6 literal")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise _bad("malformed Host: text after the IPv6 literal")
        return host, rest[1:]
    host, colon, port = authority.partition(":")
    return host, port if colon else None


def _host(raw: str) -> str:
    if raw.startswith("["):
        try:
            address = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise _bad("malformed Host: invalid IPv6 literal") from None
        if address.scope_id is not None:
            raise _bad("malformed Host: IPv6 zone identifier")
        return f"[{address.compressed}]"
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise _bad("empty Host")
    if len(name) > 253:
        raise _bad("Host name longer than 253 bytes")
    labels = name.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise _bad("malformed Host: not a DNS name or IP literal")
    if _IPV4_RE.fullmatch(name):
        # All digits and dots: only a real dotted-quad, never `1.2.3` or `0x7f.1` tricks.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _bad("malformed Host: invalid IPv4 address") from None
    return name


def _port(raw: str) -> int:
    if not _PORT_RE.fullmatch(raw):
        raise _bad("malformed Host: port is not a number")
    port = int(raw)
    if not 0 < port < 65536:
        raise _bad("malformed Host: port out of range")
    return port


def canonical_host(
    value: str,
    *,
    local_ports: Iterable[int] = (),
    absolute_authority: str | None = None,
) -> str:
    """The canonical form of a Host header value (see the module docstring); "" for an
    absent Host (HTTP/1.0). `local_ports` are the listener's ports, dropped like 80 and 443.
    Fails closed with `HttpError(400)`."""
    if not value:
        if absolute_authority:
            raise _bad("Host is missing but the target names an authority")
        return ""
    raw_host, raw_port = _split(value)
    host = _host(raw_host)
    if raw_port is not None:
        port = _port(raw_port)
        if port not in DEFAULT_PORTS and port not in local_ports:
            host = f"{host}:{port}"
    if absolute_authority is not None:
        target_host = canonical_host(absolute_authority, local_ports=local_ports)
        if target_host != host:
            raise _bad("Host disagrees with the authority of the target")
    return host
