"""The inbound listener's request rules past the strict reader, in one place. Pure.

Between reading a request and deciding it, the inbound proxy settles what the policy and
the app will both see: the canonical Host (`host.py`), no copy or look-alike of a header a
policy reads (`header_names.py`), the forwarding headers of the listener's mode
(`proxy_headers.py`) and the path as policies match it (`path_match`). Fails closed:
refusals raise `HttpError(400, ...)` before any policy runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, final

from meshgate.http.events import Headers, RequestHead
from meshgate.http.header_names import check_policy_headers
from meshgate.http.host import canonical_host
from meshgate.http.proxy_headers import ForwardingMode, inbound_proxy_headers

__all__ = ["InboundRules"]

_CACHED_HOSTS: Final = 1024


@final
@dataclass(frozen=True, slots=True)
class InboundRules:
    """`local_ports`: the listener's own ports, dropped from Host like 80 and 443."""

    local_ports: frozenset[int] = field(default_factory=frozenset)
    forwarding: ForwardingMode = "set"
    path_match: Literal["exact", "case_insensitive"] = "exact"
    # Host values repeat: raw value → canonical, bounded (refusals are never cached).
    _hosts: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def checked_host(self, head: RequestHead, policy_headers: Iterable[str]) -> str:
        """The canonical Host of `head` ("" when it has none, HTTP/1.0), after refusing
        duplicates and look-alikes of the headers in `policy_headers`."""
        check_policy_headers(head.headers, policy_headers)
        value = next((v for name, v in head.headers if name == "host"), "")
        host = self._hosts.get(value)
        if host is None:
            host = canonical_host(value, local_ports=self.local_ports)
            if len(self._hosts) < _CACHED_HOSTS:
                self._hosts[value] = host
        return host

    def policy_path(self, path: str) -> str:
        """The path as policies match it; the app still gets `path` as it is."""
        return path.lower() if self.path_match == "case_insensitive" else path

    def app_headers(self, headers: Headers, *, host: str, source_ip: str) -> Headers:
        """The headers for the app: forwarding headers per the listener's mode, Host
        canonical."""
        return inbound_proxy_headers(headers, mode=self.forwarding, source_ip=source_ip, host=host)
