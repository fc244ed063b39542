"""Registration of the ``[inbound]`` listener: register, renew the lease, deregister on drain.

The CA takes the SPIFFE ID from this sidecar's certificate and answers with a lease whose
renewal interval and TTL are its own settings (TTL about 3 intervals, so two lost renewals
still keep the endpoint in the set). A refusal (403 ``registration_denied``: the control
plane's Cedar policies do not let this ID serve the service; 400; 429) is logged as an
error and shown in ``/readyz`` details; the sidecar keeps serving peers that have its
address configured, and retries with backoff (the policy may change). `RegistrationStatus`
is the pure record; `run_registration` its trio loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, final

import trio

from mesh_ca.client import CaClientError, CaUnavailable
from mesh_ca.control.wire import (
    DEREGISTER_PATH,
    REGISTER_PATH,
    Deregistered,
    Lease,
    RegisterRequest,
)
from meshgate.clock import Clock
from sidecar.control.backoff import Backoff
from sidecar.control.client import ControlClient
from sidecar.observe.logs import event

__all__ = ["RegistrationStatus", "deregister", "run_registration"]

log = logging.getLogger("sidecar.control.registration")
_DEREGISTER_SECONDS = 2.0  # a drain does not wait longer for the CA


@final
@dataclass
class RegistrationStatus:
    """What registration last achieved; ``state`` is ``starting``,
    ``waiting_for_policies`` (central policies: registration waits for the first set),
    ``registered``, ``refused``, ``unreachable`` or ``deregistered``."""

    request: RegisterRequest
    state: str = "starting"
    lease: Lease | None = None
    last_error: str | None = None
    last_error_code: str | None = None
    last_error_at: datetime | None = None
    registrations: int = 0

    def registered(self, lease: Lease) -> None:
        self.state, self.lease = "registered", lease
        self.registrations += 1
        self.last_error = self.last_error_code = None

    def failed(self, exc: CaClientError, now: datetime) -> None:
        self.state = "unreachable" if isinstance(exc, CaUnavailable) else "refused"
        self.last_error, self.last_error_code, self.last_error_at = str(exc), exc.code, now

    def view(self, now: datetime) -> dict[str, Any]:
        lease = self.lease
        return {
            "service": self.request.service,
            "address": self.request.address,
            "protocol": self.request.protocol,
            "state": self.state,
            "lease_expires_at": lease.expires_at.isoformat() if lease else None,
            "lease_valid": lease is not None and lease.expires_at > now,
            "renew_seconds": lease.renew_seconds if lease else None,
            "ttl_seconds": lease.ttl_seconds if lease else None,
            "registrations": self.registrations,
            "last_error": self.last_error,
            "last_error_code": self.last_error_code,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }


async def run_registration(
    client: ControlClient,
    status: RegistrationStatus,
    clock: Clock,
    *,
    retry_max_seconds: float,
) -> None:
    """Register, then renew every ``renew_seconds`` of the lease, forever; failures are
    logged (a change of state once, not every retry) and retried with backoff."""
    backoff = Backoff(retry_max_seconds)
    while True:
        try:
            lease = await client.post(REGISTER_PATH, status.request, Lease)
        except CaClientError as exc:
            before = (status.state, status.last_error_code)
            status.failed(exc, clock.now())
            if (status.state, exc.code) != before:
                event(
                    log,
                    "registration refused" if status.state == "refused" else "registration failed",
                    level=logging.ERROR if status.state == "refused" else logging.WARNING,
                    service=status.request.service,
                    address=status.request.address,
                    code=exc.code,
                    error=exc.message,
                )
            await trio.sleep(backoff.next())
            continue
        if status.state != "registered":
            event(
                log,
                "registered",
                service=lease.service,
                address=lease.address,
                spiffe_id=lease.spiffe_id,
                ttl_seconds=lease.ttl_seconds,
            )
        status.registered(lease)
        backoff.reset()
        await trio.sleep(max(0.1, float(lease.renew_seconds)))


async def deregister(client: ControlClient, status: RegistrationStatus, clock: Clock) -> bool:
    """Take the listener out of the endpoint set (on drain), waiting at most a moment;
    True when the CA confirmed it."""
    if status.lease is None:
        return False
    with trio.move_on_after(_DEREGISTER_SECONDS):
        try:
            answer = await client.post(DEREGISTER_PATH, status.request, Deregistered)
        except CaClientError as exc:
            event(log, "deregistration failed", level=logging.WARNING, error=str(exc))
            return False
        status.state, status.lease = "deregistered", None
        event(log, "deregistered", service=status.request.service, removed=answer.removed)
        return True
    event(log, "deregistration timed out", level=logging.WARNING)
    return False
