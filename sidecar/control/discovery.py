"""Discovery: keep an outbound service's `EndpointTable` in step with the control plane.

A long-poll on ``/v1/control/endpoints`` with the version last seen: the CA answers at once
when the set changed, else after ``watch_wait_seconds`` with the same set. Each endpoint is
dialled only with the SPIFFE ID it registered under (secure naming, intersected with
``spiffe_ids`` by the table). An entry that does not parse, or registered another protocol
than this listener speaks, is skipped and logged. While the CA is unreachable the last set
stays (passive health takes out endpoints that died meanwhile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, final

import trio

from mesh_ca.client import CaClientError
from mesh_ca.control.wire import ENDPOINTS_PATH, EndpointSet, EndpointsWatch
from meshgate.clock import Clock
from meshgate.identity import SpiffeId, SpiffeIdError
from sidecar.config import Address, OutboundConfig
from sidecar.control.backoff import Backoff
from sidecar.control.client import ControlClient
from sidecar.observe.logs import event
from sidecar.outbound.endpoints import EndpointTable

__all__ = ["DiscoveryStatus", "registered_pairs", "watch_endpoints"]

log = logging.getLogger("sidecar.control.discovery")


@final
@dataclass
class DiscoveryStatus:
    service: str
    updates: int = 0
    last_update_at: datetime | None = None
    last_error: str | None = None
    skipped: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "updates": self.updates,
            "last_update_at": self.last_update_at.isoformat() if self.last_update_at else None,
            "last_error": self.last_error,
            "skipped": self.skipped,
        }


def registered_pairs(
    answer: EndpointSet, protocol: str
) -> tuple[list[tuple[Address, SpiffeId]], list[str]]:
    """(address, registered ID) of every usable endpoint, and why others were skipped. Pure."""
    pairs: list[tuple[Address, SpiffeId]] = []
    skipped: list[str] = []
    for endpoint in answer.endpoints:
        if endpoint.protocol != protocol:
            skipped.append(f"{endpoint.address}: protocol {endpoint.protocol}, not {protocol}")
            continue
        try:
            pairs.append((Address.parse(endpoint.address), SpiffeId.parse(endpoint.spiffe_id)))
        except (ValueError, SpiffeIdError) as exc:
            skipped.append(f"{endpoint.address}: {exc}")
    return pairs, skipped


async def watch_endpoints(
    client: ControlClient,
    config: OutboundConfig,
    table: EndpointTable,
    status: DiscoveryStatus,
    clock: Clock,
    *,
    wait_seconds: float,
    retry_max_seconds: float,
) -> None:
    """Follow the endpoint set of ``config.service`` forever."""
    backoff = Backoff(retry_max_seconds)
    after = 0
    while True:
        watch = EndpointsWatch(
            service=config.service, after=after, wait_ms=int(wait_seconds * 1000)
        )
        try:
            answer = await client.post(
                ENDPOINTS_PATH, watch, EndpointSet, wait_seconds=wait_seconds
            )
        except CaClientError as exc:
            if status.last_error != str(exc):
                event(
                    log,
                    "endpoint watch failed: keeping the last set",
                    level=logging.WARNING,
                    service=config.service,
                    code=exc.code,
                    error=exc.message,
                )
            status.last_error = str(exc)
            await trio.sleep(backoff.next())
            continue
        backoff.reset()
        status.last_error = None
        if answer.version == after:
            continue
        pairs, skipped = registered_pairs(answer, config.protocol)
        for reason in skipped:
            if reason not in status.skipped:
                event(log, "endpoint skipped", level=logging.WARNING, reason=reason)
        changed = table.replace(pairs, answer.version)
        after = answer.version
        status.skipped = skipped
        status.updates += 1
        status.last_update_at = clock.now()
        if changed:
            event(
                log,
                "endpoints changed",
                service=config.service,
                version=answer.version,
                endpoints=[str(a) for a in table.endpoints],
            )
