"""The control plane's trio shell: the ``/v1/control/*`` handlers, views and wiring.

`CaHttpServer` hands every ``/v1/control/`` request to `ControlPlane.handle`, on the event
loop: a long-poll waits on a `trio.Event` (`RegistrySync.wait`, `PolicyPublisher.
wait_changed`), never in a worker thread; store calls run in worker threads (`Threads`).
Answers to watchers come from the replica's memory (`RegistryView`, the served policy
set); the store is read once per change. `run` starts the background work: the registry
sync (lease sweeper, change listener) and the policy directory watcher.

Fails closed: no client certificate, a revoked one, no loaded policy set or a Cedar error
refuses a registration; nothing refused is stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, final

import trio

from mesh_ca.control.bodies import JSON, json_response, parse_body
from mesh_ca.control.config import ControlConfig
from mesh_ca.control.metrics import ControlMetrics
from mesh_ca.control.publisher import PolicyPublisher, PolicyState
from mesh_ca.control.registry import (
    RegistryView,
    endpoints_report,
    policy_status,
    status_document,
)
from mesh_ca.control.sync import RegistrySync
from mesh_ca.control.threads import Threads
from mesh_ca.control.wire import (
    DEREGISTER_PATH,
    ENDPOINTS_PATH,
    POLICIES_PATH,
    REGISTER_PATH,
    Deregistered,
    EndpointsWatch,
    Lease,
    PoliciesWatch,
    PolicySet,
    RegisterRequest,
    files_sha256,
)
from mesh_ca.server.core import ApiError, ApiRequest, ApiResponse, error_response
from mesh_ca.store import StoreError, StoreUnavailable
from mesh_ca.store.control import ControlStore, Registration, TooManyRegistrations
from meshgate.clock import Clock
from meshgate.identity import SpiffeId, VerifiedSvid

__all__ = ["CONTROL_PREFIX", "ControlPlane", "PolicyState"]

log = logging.getLogger("mesh_ca.control")
CONTROL_PREFIX: Final = "/v1/control/"
# An unchanged enforcement report is written at most this often per (ID, service).
_ENFORCEMENT_REFRESH_SECONDS: Final = 15.0
_REVOCATION_CACHE_SECONDS: Final = 2.0
_NO_POLICY_SET: Final = ApiError(
    503,
    "no_policy_set",
    "the control plane has not published a policy set yet ([control] policy_dir unset, or "
    "never valid); retry later",
    (("retry-after", "5"),),
)
_REVOCATION_CACHE_SIZE: Final = 16_384


@final
class ControlPlane:
    def __init__(
        self,
        store: ControlStore,
        config: ControlConfig,
        policy_dir: Path | None,
        clock: Clock,
        verify_client: Callable[[ApiRequest, datetime], VerifiedSvid],
        is_revoked: Callable[[SpiffeId, int], bool],
        *,
        inline_store: bool = False,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or ControlMetrics()
        self.config = config
        self.clock = clock
        self.view = RegistryView()
        self._verify_client = verify_client
        self._is_revoked = is_revoked
        self._threads = Threads(inline=inline_store)
        self.publisher = PolicyPublisher(
            store, clock, self._threads, policy_dir, config.policy_poll_seconds, self.metrics
        )
        self.sync = RegistrySync(
            store, clock, self._threads, self.view, self.publisher.adopt_latest
        )
        self._enforced: dict[tuple[str, str], tuple[int, float]] = {}
        self._closing = False
        self.metrics.endpoints.set_function(self.view.endpoint_count)
        self.metrics.policy_version.set_function(lambda: self.publisher.state.version)
        self._not_revoked: dict[tuple[str, int], float] = {}  # (ID, serial) -> checked at

    # Requests

    async def handle(self, request: ApiRequest) -> ApiResponse:
        """One control-plane request to one response; refusals are error responses."""
        handler = _ROUTES.get(request.path)
        try:
            if handler is None:
                raise ApiError(404, "not_found", f"no endpoint {request.path}")
            if request.method != "POST":
                raise ApiError(
                    405,
                    "method_not_allowed",
                    f"{request.path} takes POST, not {request.method}",
                    (("allow", "POST"),),
                )
            response = await handler(self, request)
        except ApiError as exc:
            if request.path == REGISTER_PATH:
                self.metrics.registrations.labels(exc.code).inc()
            return error_response(exc)
        except StoreUnavailable as exc:
            error = ApiError(
                503,
                "store_unavailable",
                "the CA state store is unavailable; nothing was changed; retry later",
                (("retry-after", "5"),),
            )
            return error_response(error, detail=str(exc)[:300])
        if request.path == REGISTER_PATH:
            self.metrics.registrations.labels(response.log.get("registration", "ok")).inc()
        return response

    @property
    def policy(self) -> PolicyState:
        return self.publisher.state

    def close(self) -> None:
        """Shutting down: answer every waiting watcher now."""
        self._closing = True
        self.sync.close()
        self.publisher.close()

    async def _caller(self, request: ApiRequest, now: datetime, *, fresh: bool) -> VerifiedSvid:
        """The verified, unrevoked caller. A watch (`fresh` false) may rely on a check made
        up to `_REVOCATION_CACHE_SECONDS` ago: one change wakes every watcher of a service
        at once, and a store read each would be most of the fan-out's cost. A registration
        always asks the store."""
        svid = self._verify_client(request, now)  # 401/403 without a valid client SVID
        key = (str(svid.spiffe_id), svid.leaf.serial_number)
        moment = time.monotonic()
        checked = self._not_revoked.get(key)
        if fresh or checked is None or moment - checked > _REVOCATION_CACHE_SECONDS:
            if await self._threads.run(self._is_revoked, svid.spiffe_id, key[1]):
                self._not_revoked.pop(key, None)
                raise ApiError(403, "revoked", f"{svid.spiffe_id} (or its certificate) is revoked")
            if len(self._not_revoked) >= _REVOCATION_CACHE_SIZE:
                self._not_revoked.clear()
            self._not_revoked[key] = moment
        return svid

    async def _register(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now, fresh=True)
        body = parse_body(request, RegisterRequest)
        peer = str(svid.spiffe_id)
        loaded = self.policy.loaded
        if loaded is None:
            reason = "the control plane has no policy set loaded (control.policy_dir)"
            policies: tuple[str, ...] = ()
        else:
            decision = loaded.decide_register(
                svid.spiffe_id, body.service, body.address, body.protocol, request.source, now
            )
            policies = decision.policy_ids
            reason = (
                ""
                if decision.allowed
                else "; ".join(decision.errors)
                or (f"forbidden by {', '.join(policies)}" if policies else "no policy permits it")
            )
        if reason:
            log.warning(
                json.dumps(
                    {
                        "event": "registration_denied",
                        "peer": peer,
                        "service": body.service,
                        "address": body.address,
                        "policies": list(policies),
                        "reason": reason,
                    }
                )
            )
            raise ApiError(
                403,
                "registration_denied",
                f"{peer} may not serve {body.service}: {reason}",
                log={"peer": peer, "service": body.service},
            )
        ttl = self.config.lease_ttl_seconds
        registration = Registration(
            body.service, peer, body.address, body.protocol, now + timedelta(seconds=ttl)
        )
        limit = self.config.max_registrations_per_id
        try:
            version = await self._threads.run(self.store.register, registration, now, limit)
        except TooManyRegistrations:
            raise ApiError(
                429,
                "too_many_registrations",
                f"{peer} already holds {limit} registrations (control.max_registrations_per_id); "
                "deregister one or wait for its lease to end",
                log={"peer": peer, "service": body.service},
            ) from None
        kind = "renewed" if version is None else "new"
        if version is None:
            self.view.renewed(registration)
        else:
            await self.sync.refresh(body.service)
        lease = Lease(
            service=body.service,
            address=body.address,
            protocol=body.protocol,
            spiffe_id=peer,
            ttl_seconds=ttl,
            renew_seconds=self.config.renew_seconds,
            expires_at=registration.expires_at,
        )
        return json_response(
            lease, peer=peer, service=body.service, address=body.address, registration=kind
        )

    async def _deregister(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now, fresh=True)
        body = parse_body(request, RegisterRequest)
        peer = str(svid.spiffe_id)
        version = await self._threads.run(self.store.deregister, body.service, peer, body.address)
        if version is not None:
            await self.sync.refresh(body.service)
        return json_response(
            Deregistered(removed=version is not None), peer=peer, service=body.service
        )

    async def _endpoints(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now, fresh=False)
        body = parse_body(request, EndpointsWatch)
        deadline = trio.current_time() + body.wait_ms / 1000
        while self.view.get(body.service).version == body.after:
            if trio.current_time() >= deadline or self._closing:
                break
            with self.metrics.watchers.track_inprogress():
                await self.sync.wait(body.service, deadline)
        answer = self.view.endpoint_set_json(body.service)
        return ApiResponse(
            200, answer, JSON, log={"peer": str(svid.spiffe_id), "service": body.service}
        )

    async def _policies(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now, fresh=False)
        body = parse_body(request, PoliciesWatch)
        peer = str(svid.spiffe_id)
        if self.policy.loaded is None:
            raise _NO_POLICY_SET
        if not self._may_serve(svid.spiffe_id, body.service, request.source, now):
            raise ApiError(
                403,
                "service_denied",
                f"{peer} may not serve {body.service}, so it gets none of its policies",
                log={"peer": peer, "service": body.service},
            )
        await self._record_enforcement(peer, body.service, body.after, now)
        deadline = trio.current_time() + body.wait_ms / 1000
        while self.policy.version == body.after:
            if trio.current_time() >= deadline or self._closing:
                break
            with self.metrics.watchers.track_inprogress():
                await self.publisher.wait_changed(deadline)
        state = self.policy
        if state.loaded is None or state.published_at is None:
            raise _NO_POLICY_SET
        files = state.loaded.slice_for(body.service)
        answer = PolicySet(
            version=state.version,
            sha256=files_sha256(files),
            service=body.service,
            files=files,
            published_at=state.published_at,
        )
        return json_response(answer, peer=peer, service=body.service, version=str(state.version))

    def _may_serve(self, spiffe_id: SpiffeId, service: str, source: str, now: datetime) -> bool:
        """A caller gets a service's policies if it holds a registration for it, or if
        policy would let it register (a sidecar fetches its policies before it is ready)."""
        if self.view.holds(service, str(spiffe_id)):
            return True
        loaded = self.policy.loaded
        if loaded is None:
            return False
        for protocol in ("http", "tcp"):
            decision = loaded.decide_register(spiffe_id, service, "", protocol, source, now)
            if decision.allowed:
                return True
        return False

    async def _record_enforcement(
        self, peer: str, service: str, version: int, now: datetime
    ) -> None:
        key = (peer, service)
        last = self._enforced.get(key)
        moment = time.monotonic()
        if (
            last is not None
            and last[0] == version
            and moment - last[1] < _ENFORCEMENT_REFRESH_SECONDS
        ):
            return
        try:
            await self._threads.run(self.store.record_enforcement, peer, service, version, now)
        except StoreError as exc:  # a report lost is not worth refusing the watch
            log.warning(json.dumps({"event": "enforcement_not_recorded", "error": str(exc)}))
            return
        self._enforced[key] = (version, moment)

    # Views (admin listener, JSON)

    def endpoints_json(self, service: str | None = None) -> bytes:
        rows = endpoints_report(self.view.services(), service)
        return json.dumps({"endpoints": rows}).encode()

    async def policy_status_json(self) -> bytes:
        rows = await self._threads.run(self.store.enforcement)
        state = self.policy
        return json.dumps(
            status_document(
                state.version,
                state.loaded.sha256 if state.loaded else None,
                state.published_at,
                state.error,
                policy_status(rows, state.version, self.clock.now()),
            )
        ).encode()

    # Background

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the registry and the policy set, then keep both current until cancelled."""
        await self.sync.resync()
        await self.publisher.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sync.run)
            nursery.start_soon(self.publisher.watch)
            task_status.started()


_Handler = Callable[[ControlPlane, ApiRequest], Awaitable[ApiResponse]]
_ROUTES: Final[dict[str, _Handler]] = {
    REGISTER_PATH: ControlPlane._register,
    DEREGISTER_PATH: ControlPlane._deregister,
    ENDPOINTS_PATH: ControlPlane._endpoints,
    POLICIES_PATH: ControlPlane._policies,
}
