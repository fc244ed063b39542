"""A replica's view of the registry, and the policy status report. Pure: no trio, no I/O.

The store is the truth (`mesh_ca.store.control`); each CA replica keeps the endpoint sets
it last read (`RegistryView`) so that watchers are answered from memory and a store read
happens once per change, not once per watcher. A set is replaced only by one of the same
or a newer version, so a late read never rolls a watcher back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, final

from mesh_ca.control.wire import Endpoint, EndpointSet
from mesh_ca.store.control import Enforcement, Registration, ServiceEndpoints

__all__ = [
    "SILENT_AFTER",
    "PolicyStatusRow",
    "RegistryView",
    "endpoints_report",
    "policy_status",
    "status_document",
]

# A sidecar that has not asked for policies for this long is shown as silent (stale): its
# long-poll asks at least every 30 s.
SILENT_AFTER: Final = timedelta(seconds=90)


@final
class RegistryView:
    def __init__(self) -> None:
        self._services: dict[str, ServiceEndpoints] = {}
        # The answer's JSON per service, made once for all its watchers (a change wakes
        # every one of them with the same set); dropped whenever the set changes.
        self._bodies: dict[str, bytes] = {}

    def get(self, service: str) -> ServiceEndpoints:
        return self._services.get(service) or ServiceEndpoints(service, 0, ())

    def update(self, current: ServiceEndpoints) -> bool:
        """Take `current` unless an older version; True when the version moved on."""
        known = self._services.get(current.service)
        if known is not None and current.version < known.version:
            return False
        self._services[current.service] = current
        self._bodies.pop(current.service, None)
        return known is None or current.version != known.version

    def renewed(self, registration: Registration) -> None:
        """A lease renewed here: its new expiry, the version unchanged."""
        known = self._services.get(registration.service)
        if known is None:
            return
        key = (registration.spiffe_id, registration.address)
        fresh = tuple(
            registration if (r.spiffe_id, r.address) == key else r for r in known.registrations
        )
        self._services[registration.service] = replace(known, registrations=fresh)
        self._bodies.pop(registration.service, None)

    def endpoint_count(self) -> int:
        return sum(len(s.registrations) for s in self._services.values())

    def holds(self, service: str, spiffe_id: str) -> bool:
        return any(r.spiffe_id == spiffe_id for r in self.get(service).registrations)

    def next_expiry(self) -> datetime | None:
        return min(
            (r.expires_at for s in self._services.values() for r in s.registrations),
            default=None,
        )

    def services(self) -> list[ServiceEndpoints]:
        return [self._services[name] for name in sorted(self._services)]

    def endpoint_set_json(self, service: str) -> bytes:
        """`endpoint_set(service)` as JSON bytes, cached until the set changes. A service
        nobody registered is answered but not cached (any name may be asked for)."""
        body = self._bodies.get(service)
        if body is None:
            body = self.endpoint_set(service).model_dump_json().encode()
            if service in self._services:
                self._bodies[service] = body
        return body

    def endpoint_set(self, service: str) -> EndpointSet:
        current = self.get(service)
        return EndpointSet(
            service=service,
            version=current.version,
            endpoints=tuple(
                Endpoint(
                    address=r.address,
                    spiffe_id=r.spiffe_id,
                    protocol=r.protocol,  # type: ignore[arg-type]  # stored as checked
                    expires_at=r.expires_at,
                )
                for r in current.registrations
            ),
        )


def endpoints_report(
    services: Iterable[ServiceEndpoints], service: str | None
) -> list[dict[str, object]]:
    """`mesh-ca endpoints list` and the admin view: one row per endpoint."""
    return [
        {
            "service": s.service,
            "version": s.version,
            "address": r.address,
            "spiffe_id": r.spiffe_id,
            "protocol": r.protocol,
            "expires_at": r.expires_at.isoformat(),
        }
        for s in services
        if service is None or s.service == service
        for r in s.registrations
    ]


@final
@dataclass(frozen=True, slots=True)
class PolicyStatusRow:
    spiffe_id: str
    service: str
    enforced_version: int  # 0: none yet (denies everything)
    latest_version: int
    seen_at: datetime
    state: str  # "current", "behind" (an older version) or "silent" (not heard from)

    @property
    def stale(self) -> bool:
        return self.state != "current"


def policy_status(
    rows: Sequence[Enforcement], latest_version: int, now: datetime
) -> list[PolicyStatusRow]:
    """Which version each sidecar enforces and which are stale: behind the latest, or
    silent for longer than `SILENT_AFTER`."""
    out = []
    for row in rows:
        if now - row.seen_at > SILENT_AFTER:
            state = "silent"
        elif row.version < latest_version:
            state = "behind"
        else:
            state = "current"
        out.append(
            PolicyStatusRow(
                row.spiffe_id, row.service, row.version, latest_version, row.seen_at, state
            )
        )
    return out


def status_document(
    version: int,
    sha256: str | None,
    published_at: datetime | None,
    error: str | None,
    rows: Sequence[PolicyStatusRow],
) -> dict[str, object]:
    """The policy status as JSON (admin view and `mesh-ca policy status --output json`)."""
    return {
        "published": {
            "version": version,
            "sha256": sha256,
            "published_at": published_at.isoformat() if published_at else None,
        },
        "last_error": error,
        "sidecars": [
            {
                "spiffe_id": r.spiffe_id,
                "service": r.service,
                "enforced_version": r.enforced_version,
                "latest_version": r.latest_version,
                "seen_at": r.seen_at.isoformat(),
                "state": r.state,
                "stale": r.stale,
            }
            for r in rows
        ],
    }
