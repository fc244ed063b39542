"""Cedar behind the sidecar's authorization step: one `Decision` for both modes.

`CedarAuthorizer` is the `Authorizer` of tcp mode (action ``connect``, once per
connection); the http path asks the `PolicyStore` directly and gets the same `Decision`
(`result`, `determining_policy_ids`, `forward`). Pure: no trio, no sockets.
Fails closed: only a Cedar Allow with no evaluation errors allows; audit mode forwards
what would be denied, but never while no policy set is loaded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import final

from meshgate.identity import SpiffeId
from sidecar.policy import AccessRequest, Decision, PolicyStore

__all__ = ["CedarAuthorizer", "source_ip"]


def source_ip(source: str) -> str:
    """The IP of a ``host:port`` / ``[v6]:port`` source address for the Cedar context.

    Anything that is not an IP literal is returned unchanged: Cedar then fails to build the
    `ip` value, and a policy that reads `context.source_address` denies (fails closed).
    """
    host = source
    if source.startswith("["):
        host = source[1:].partition("]")[0]
    elif source.count(":") == 1:
        host = source.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return source


@final
class CedarAuthorizer:
    """tcp mode: decide ``connect`` for the verified peer against the live policy set.

    `context` holds ``source`` (``host:port``) and ``tls_version``, as `sidecar.inbound.tcp`
    passes them. Fails closed (see the module docstring).
    """

    def __init__(
        self, store: PolicyStore, now: Callable[[], datetime], *, audit: bool = False
    ) -> None:
        self._store = store
        self._now = now
        self._audit = audit

    def authorize(
        self,
        peer: SpiffeId,
        action: str,
        resource: str,
        context: Mapping[str, object],
    ) -> Decision:
        request = AccessRequest(
            principal=peer,
            action=action,
            service=resource,
            source_address=source_ip(str(context.get("source", ""))),
            now=self._now(),
            tls_version=str(context.get("tls_version", "")),
        )
        return self._store.decide(request, audit=self._audit)
