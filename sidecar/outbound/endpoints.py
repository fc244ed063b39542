"""The endpoint set of one outbound service: who may be dialled, as whom, and in which order.

Pure (no trio, no sockets; `now` is trio time passed in). Static ``endpoints`` make a fixed
set whose every endpoint must present one of ``spiffe_ids``. With discovery the set is
replaced by each answer of the control plane: an endpoint must present the SPIFFE ID it
registered with, and, when ``spiffe_ids`` is configured, also one of those (an endpoint
whose registered ID is outside them is never dialled: fails closed).

Passive health: `failed` counts consecutive failures (connect, handshake, a connection cut
before the response); `eject_after` of them eject the endpoint for `eject_seconds`, and
`succeeded` resets the count. `order` puts healthy endpoints first, round robin, then the
ejected ones soonest-back first: with none healthy a request still tries them rather than
failing while a peer may be back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, final

from meshgate.identity import SpiffeId
from sidecar.config import Address, OutboundConfig

__all__ = ["EndpointHealth", "EndpointTable", "static_table", "table_for"]


@final
@dataclass
class EndpointHealth:
    """Consecutive failures and ejection of one endpoint (`ejected_until` in trio time)."""

    failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0
    last_error: str | None = None

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


@final
@dataclass
class EndpointTable:
    """The current endpoints of one service and their health. `version` is the control
    plane's version of the set (0: static, or none received yet)."""

    allowed: frozenset[SpiffeId]
    eject_after: int = 3
    eject_seconds: float = 10.0
    discovered: bool = False
    version: int = 0
    _expected: dict[Address, frozenset[SpiffeId]] = field(default_factory=dict)
    _refused: dict[Address, frozenset[SpiffeId]] = field(default_factory=dict)
    _health: dict[Address, EndpointHealth] = field(default_factory=dict)
    _next: int = 0
    _subscribers: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def static(
        cls,
        endpoints: Iterable[Address],
        allowed: Iterable[SpiffeId],
        *,
        eject_after: int = 3,
        eject_seconds: float = 10.0,
    ) -> EndpointTable:
        table = cls(frozenset(allowed), eject_after, eject_seconds)
        table._expected = dict.fromkeys(endpoints, table.allowed)
        table._health = {address: EndpointHealth() for address in table._expected}
        return table

    # -- the set ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every change of the dialable set or its IDs."""
        self._subscribers.append(callback)

    @property
    def endpoints(self) -> tuple[Address, ...]:
        return tuple(self._expected)

    def expected(self, address: Address) -> frozenset[SpiffeId]:
        """The IDs `address` may present; empty (refuse every peer) when it left the set."""
        return self._expected.get(address, frozenset())

    def replace(self, registered: Iterable[tuple[Address, SpiffeId]], version: int) -> bool:
        """Take a new discovered set: (address, registered ID) pairs. Health of endpoints
        that stay is kept. Returns True when the dialable set or its IDs changed."""
        ids: dict[Address, set[SpiffeId]] = {}
        for address, spiffe_id in registered:
            ids.setdefault(address, set()).add(spiffe_id)
        expected: dict[Address, frozenset[SpiffeId]] = {}
        refused: dict[Address, frozenset[SpiffeId]] = {}
        for address, names in ids.items():
            usable = frozenset(names) & self.allowed if self.allowed else frozenset(names)
            if usable:
                expected[address] = usable
            else:
                refused[address] = frozenset(names)
        changed = expected != self._expected
        self._expected, self._refused, self.version = expected, refused, version
        self._health = {a: self._health.get(a) or EndpointHealth() for a in expected}
        if changed:
            for callback in self._subscribers:
                callback()
        return changed

    # -- health ----------------------------------------------------------------------------

    def succeeded(self, address: Address) -> None:
        health = self._health.get(address)
        if health is not None:
            health.failures, health.ejected_until, health.last_error = 0, 0.0, None

    def failed(self, address: Address, now: float, error: str) -> bool:
        """Count one failure; True when it ejected the endpoint."""
        health = self._health.get(address)
        if health is None:
            return False
        health.failures += 1
        health.last_error = error
        if health.failures < self.eject_after:
            return False
        health.failures = 0
        health.ejected_until = now + self.eject_seconds
        health.ejections += 1
        return True

    def ejected(self, address: Address, now: float) -> bool:
        health = self._health.get(address)
        return health is not None and health.ejected(now)

    # -- picking ---------------------------------------------------------------------------

    def order(self, now: float, *, avoid: frozenset[Address] = frozenset()) -> list[Address]:
        """Endpoints to try, best first: healthy ones round robin (each call starts one
        further), then ejected ones soonest-back first, then those in `avoid` (where a
        request just failed)."""
        endpoints = list(self._expected)
        if not endpoints:
            return []
        start = self._next % len(endpoints)
        self._next = start + 1
        rotated = [*endpoints[start:], *endpoints[:start]]
        if not avoid and not any(self.ejected(a, now) for a in rotated):
            return rotated  # the common case, the same order as below, without its lists
        healthy = [a for a in rotated if a not in avoid and not self.ejected(a, now)]
        ejected = sorted(
            (a for a in rotated if a not in avoid and self.ejected(a, now)),
            key=lambda a: self._health[a].ejected_until,
        )
        return [*healthy, *ejected, *(a for a in rotated if a in avoid)]

    # -- views -----------------------------------------------------------------------------

    def view(self, now: float) -> dict[str, Any]:
        """For ``/upstreams``: the set, each endpoint's health, and refused registrations."""
        rows = []
        for address, ids in self._expected.items():
            health = self._health[address]
            rows.append(
                {
                    "address": str(address),
                    "spiffe_ids": sorted(str(i) for i in ids),
                    "ejected": health.ejected(now),
                    "ejected_for_seconds": round(max(0.0, health.ejected_until - now), 3),
                    "consecutive_failures": health.failures,
                    "ejections": health.ejections,
                    "last_error": health.last_error,
                }
            )
        return {
            "source": "control-plane" if self.discovered else "config",
            "version": self.version,
            "endpoints": rows,
            "refused": [
                {
                    "address": str(a),
                    "spiffe_ids": sorted(str(i) for i in ids),
                    "reason": "registered ID not in spiffe_ids",
                }
                for a, ids in self._refused.items()
            ],
        }


def static_table(config: OutboundConfig) -> EndpointTable:
    """The fixed endpoint set of ``endpoints`` (every one must present ``spiffe_ids``)."""
    return EndpointTable.static(
        config.endpoints,
        config.spiffe_ids,
        eject_after=config.eject_after_failures,
        eject_seconds=config.eject_seconds,
    )


def table_for(config: OutboundConfig) -> EndpointTable:
    """The table of one ``[[outbound]]``: static, or empty until discovery fills it."""
    if not config.discovered:
        return static_table(config)
    return EndpointTable(
        frozenset(config.spiffe_ids),
        config.eject_after_failures,
        config.eject_seconds,
        discovered=True,
    )
