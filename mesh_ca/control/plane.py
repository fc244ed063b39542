"""The control plane's trio shell: the ``/v1/control/*`` handlers and the background loops.

`CaHttpServer` hands every ``/v1/control/`` request to `ControlPlane.handle`, on the event
loop: a long-poll waits on a `trio.Event`, never in a worker thread, and store calls go to
worker threads under a small limiter. Answers to watchers come from the replica's memory
(`RegistryView`, the loaded policy set); the store is read once per change.

Background (`run`): the lease sweeper (removes expired registrations; every replica runs
it, the store makes it idempotent), the policy directory watcher (validate, then publish;
on error keep the last good set and say why), and on PostgreSQL the change listener that
brings other replicas' changes within a notification's delay. A full re-read every
`_RESYNC_SECONDS` heals a missed notification.

Fails closed: no client certificate, a revoked one, no loaded policy set or a Cedar error
refuses a registration; nothing refused is stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, final

import trio
from pydantic import BaseModel, ValidationError

from mesh_ca.control.config import ControlConfig
from mesh_ca.control.policy_set import (
    LoadedPolicySet,
    PolicySetError,
    directory_fingerprint,
    load_policy_set,
    read_policy_files,
)
from mesh_ca.control.registry import (
    RegistryView,
    endpoints_report,
    policy_status,
    status_document,
)
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
from mesh_ca.store import StateStore, StoreError, StoreUnavailable
from mesh_ca.store.control import (
    ControlStore,
    Registration,
    TooManyRegistrations,
    control_store,
)
from meshgate.clock import Clock
from meshgate.identity import SpiffeId, VerifiedSvid

__all__ = ["CONTROL_PREFIX", "ControlPlane", "PolicyState", "control_plane_for"]

log = logging.getLogger("mesh_ca.control")
CONTROL_PREFIX: Final = "/v1/control/"
_JSON: Final = "application/json"
_RESYNC_SECONDS: Final = 30.0
_SWEEP_MAX_SECONDS: Final = 1.0
_SWEEP_MIN_SECONDS: Final = 0.05
_RETRY_SECONDS: Final = 1.0
# An unchanged enforcement report is written at most this often per (ID, service).
_ENFORCEMENT_REFRESH_SECONDS: Final = 15.0
_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


@final
@dataclass(frozen=True, slots=True)
class PolicyState:
    """The policy set this replica serves and decides with, and the last refusal."""

    loaded: LoadedPolicySet | None = None
    version: int = 0
    published_at: datetime | None = None
    error: str | None = None  # why the directory's current content was not published
    error_at: datetime | None = None


class _Waiters:
    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.count = 0


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
    ) -> None:
        self.store = store
        self.config = config
        self.policy_dir = policy_dir
        self.clock = clock
        self.view = RegistryView()
        self.policy = PolicyState()
        self._verify_client = verify_client
        self._is_revoked = is_revoked
        self._limiter = trio.CapacityLimiter(8)
        self._endpoint_waiters: dict[str, _Waiters] = {}
        self._policy_changed = trio.Event()
        self._closing = False
        self._enforced: dict[tuple[str, str], tuple[int, float]] = {}
        self._heard: set[str] = set()
        self._heard_policy = False
        self._heard_event = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

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
            return await handler(self, request)
        except ApiError as exc:
            return error_response(exc)
        except StoreUnavailable as exc:
            error = ApiError(
                503,
                "store_unavailable",
                "the CA state store is unavailable; nothing was changed; retry later",
                (("retry-after", "5"),),
            )
            return error_response(error, detail=str(exc)[:300])

    def close(self) -> None:
        """Shutting down: answer every waiting watcher now."""
        self._closing = True
        for waiters in self._endpoint_waiters.values():
            waiters.event.set()
        self._policy_changed.set()

    async def _caller(self, request: ApiRequest, now: datetime) -> VerifiedSvid:
        svid = self._verify_client(request, now)  # 401/403 without a valid client SVID
        if await self._run(self._is_revoked, svid.spiffe_id, svid.leaf.serial_number):
            raise ApiError(403, "revoked", f"{svid.spiffe_id} (or its certificate) is revoked")
        return svid

    async def _register(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now)
        body = _parse(request, RegisterRequest)
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
            version = await self._run(self.store.register, registration, now, limit)
        except TooManyRegistrations:
            raise ApiError(
                429,
                "too_many_registrations",
                f"{peer} already holds {limit} registrations (control.max_registrations_per_id); "
                "deregister one or wait for its lease to end",
                log={"peer": peer, "service": body.service},
            ) from None
        if version is None:
            self.view.renewed(registration)
        else:
            await self._refresh(body.service)
        lease = Lease(
            service=body.service,
            address=body.address,
            protocol=body.protocol,
            spiffe_id=peer,
            ttl_seconds=ttl,
            renew_seconds=self.config.renew_seconds,
            expires_at=registration.expires_at,
        )
        return _json(lease, peer=peer, service=body.service, address=body.address)

    async def _deregister(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now)
        body = _parse(request, RegisterRequest)
        peer = str(svid.spiffe_id)
        version = await self._run(self.store.deregister, body.service, peer, body.address)
        if version is not None:
            await self._refresh(body.service)
        return _json(Deregistered(removed=version is not None), peer=peer, service=body.service)

    async def _endpoints(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now)
        body = _parse(request, EndpointsWatch)
        deadline = trio.current_time() + body.wait_ms / 1000
        while (
            self.view.get(body.service).version == body.after
            and not self._closing
            and trio.current_time() < deadline
        ):
            await self._wait_endpoints(body.service, deadline)
        answer = self.view.endpoint_set(body.service)
        return _json(answer, peer=str(svid.spiffe_id), service=body.service)

    async def _wait_endpoints(self, service: str, deadline: float) -> None:
        waiters = self._endpoint_waiters.get(service)
        if waiters is None:
            waiters = self._endpoint_waiters[service] = _Waiters()
        waiters.count += 1
        try:
            with trio.move_on_at(deadline):
                await waiters.event.wait()
        finally:
            waiters.count -= 1
            # The entry lives only while someone waits: watching names that never change
            # leaves nothing behind.
            if waiters.count == 0 and self._endpoint_waiters.get(service) is waiters:
                del self._endpoint_waiters[service]

    def _wake_endpoints(self, service: str) -> None:
        waiters = self._endpoint_waiters.pop(service, None)
        if waiters is not None:
            waiters.event.set()

    async def _policies(self, request: ApiRequest) -> ApiResponse:
        now = self.clock.now()
        svid = await self._caller(request, now)
        body = _parse(request, PoliciesWatch)
        peer = str(svid.spiffe_id)
        if not self._may_serve(svid.spiffe_id, body.service, request.source, now):
            raise ApiError(
                403,
                "service_denied",
                f"{peer} may not serve {body.service}, so it gets none of its policies",
                log={"peer": peer, "service": body.service},
            )
        await self._record_enforcement(peer, body.service, body.after, now)
        deadline = trio.current_time() + body.wait_ms / 1000
        while (
            self.policy.version == body.after
            and not self._closing
            and trio.current_time() < deadline
        ):
            with trio.move_on_at(deadline):
                await self._policy_changed.wait()
        state = self.policy
        if state.loaded is None or state.published_at is None:
            raise ApiError(
                503,
                "no_policy_set",
                "the control plane has not published a policy set yet",
                (("retry-after", "5"),),
            )
        files = state.loaded.slice_for(body.service)
        answer = PolicySet(
            version=state.version,
            sha256=files_sha256(files),
            service=body.service,
            files=files,
            published_at=state.published_at,
        )
        return _json(answer, peer=peer, service=body.service, version=str(state.version))

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
            await self._run(self.store.record_enforcement, peer, service, version, now)
        except StoreError as exc:  # a report lost is not worth refusing the watch
            log.warning(json.dumps({"event": "enforcement_not_recorded", "error": str(exc)}))
            return
        self._enforced[key] = (version, moment)

    # Views (admin listener, JSON)

    def endpoints_json(self, service: str | None = None) -> bytes:
        rows = endpoints_report(self.view.services(), service)
        return json.dumps({"endpoints": rows}).encode()

    async def policy_status_json(self) -> bytes:
        rows = await self._run(self.store.enforcement)
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
        self._token = trio.lowlevel.current_trio_token()
        await self._resync()
        if self.policy_dir is not None:
            await self._publish_directory()
        await self._adopt_latest()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            nursery.start_soon(self._heard_loop)
            nursery.start_soon(self._listen_loop)
            if self.policy_dir is not None:
                nursery.start_soon(self._policy_loop, self.policy_dir)
            task_status.started()

    async def _resync(self) -> None:
        try:
            services = await self._run(self.store.all_endpoints, self.clock.now())
        except StoreError as exc:
            log.error(json.dumps({"event": "registry_read_failed", "error": str(exc)}))
            return
        for current in services:
            if self.view.update(current):
                self._wake_endpoints(current.service)

    async def _refresh(self, service: str) -> None:
        current = await self._run(self.store.endpoints, service, self.clock.now())
        if self.view.update(current):
            self._wake_endpoints(service)

    async def _sweep_loop(self) -> None:
        resync_at = trio.current_time() + _RESYNC_SECONDS
        while True:
            now = self.clock.now()
            try:
                changed = await self._run(self.store.expire, now)
                for service in changed:
                    await self._refresh(service)
            except StoreError as exc:
                log.error(json.dumps({"event": "lease_sweep_failed", "error": str(exc)}))
            if trio.current_time() >= resync_at:
                resync_at = trio.current_time() + _RESYNC_SECONDS
                await self._resync()
            wait = _SWEEP_MAX_SECONDS
            next_expiry = self.view.next_expiry()
            if next_expiry is not None:
                wait = min(wait, (next_expiry - self.clock.now()).total_seconds())
            await trio.sleep(max(_SWEEP_MIN_SECONDS, wait))

    async def _policy_loop(self, directory: Path) -> None:
        fingerprint = directory_fingerprint(directory)
        while True:
            await trio.sleep(self.config.policy_poll_seconds)
            now_fingerprint = directory_fingerprint(directory)
            if now_fingerprint != fingerprint:
                fingerprint = now_fingerprint
                await self._publish_directory()

    async def _publish_directory(self) -> None:
        """Validate the directory; publish it if good, else keep the last good set."""
        assert self.policy_dir is not None
        directory = self.policy_dir
        now = self.clock.now()
        try:
            files = await self._run(read_policy_files, directory)
            loaded = await self._run(load_policy_set, files)
        except PolicySetError as exc:
            self.policy = _with_error(self.policy, f"{directory}: {exc}", now)
            log.error(
                json.dumps(
                    {
                        "event": "policy_set_refused",
                        "dir": str(directory),
                        "problems": list(exc.problems)[:20],
                        "serving_version": self.policy.version,
                    }
                )
            )
            return
        try:
            published = await self._run(self.store.publish_policy, loaded.files, loaded.sha256, now)
        except StoreError as exc:
            self.policy = _with_error(self.policy, f"cannot publish: {exc}", now)
            log.error(json.dumps({"event": "policy_publish_failed", "error": str(exc)}))
            return
        if published.sha256 == loaded.sha256:
            self._adopt(loaded, published.version, published.published_at)

    async def _adopt_latest(self) -> None:
        """Serve the newest published set if it is newer than ours (another replica's)."""
        try:
            latest = await self._run(self.store.latest_policy)
        except StoreError as exc:
            log.error(json.dumps({"event": "policy_read_failed", "error": str(exc)}))
            return
        if latest is None or latest.version <= self.policy.version:
            return
        try:
            loaded = await self._run(load_policy_set, latest.files)
        except PolicySetError as exc:  # published by a newer or broken replica: keep ours
            log.error(json.dumps({"event": "published_policy_unusable", "error": str(exc)}))
            return
        self._adopt(loaded, latest.version, latest.published_at)

    def _adopt(self, loaded: LoadedPolicySet, version: int, published_at: datetime) -> None:
        if version < self.policy.version:
            return
        changed = version != self.policy.version
        self.policy = PolicyState(loaded, version, published_at)
        if changed:
            log.info(
                json.dumps(
                    {"event": "policy_set_published", "version": version, "sha256": loaded.sha256}
                )
            )
            self._policy_changed.set()
            self._policy_changed = trio.Event()

    async def _listen_loop(self) -> None:
        while True:
            started = trio.current_time()
            try:
                await trio.to_thread.run_sync(
                    self.store.listen,
                    self._heard_in_thread,
                    self._listen_stopped,
                    abandon_on_cancel=True,
                )
            except StoreError as exc:
                log.error(json.dumps({"event": "change_listener_lost", "error": str(exc)}))
            else:
                if trio.current_time() - started < _RETRY_SECONDS and not self._closing:
                    return  # a backend without notifications (SQLite): one process only
            if self._closing:
                return
            await trio.sleep(_RETRY_SECONDS)
            await self._resync()  # what was missed while not listening
            await self._adopt_latest()

    def _listen_stopped(self) -> bool:
        return self._closing

    def _heard_in_thread(self, payload: str) -> None:
        if self._token is not None:
            trio.from_thread.run_sync(self._note, payload, trio_token=self._token)

    def _note(self, payload: str) -> None:
        kind, _, what = payload.partition(":")
        if kind == "endpoints":
            self._heard.add(what)
        elif kind == "policies":
            self._heard_policy = True
        self._heard_event.set()

    async def _heard_loop(self) -> None:
        while True:
            await self._heard_event.wait()
            self._heard_event = trio.Event()
            services, self._heard = self._heard, set()
            policy, self._heard_policy = self._heard_policy, False
            try:
                for service in sorted(services):
                    await self._refresh(service)
            except StoreError as exc:
                log.error(json.dumps({"event": "registry_read_failed", "error": str(exc)}))
            if policy:
                await self._adopt_latest()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)


def _with_error(state: PolicyState, error: str, now: datetime) -> PolicyState:
    return PolicyState(state.loaded, state.version, state.published_at, error[:2000], now)


def _json(model: BaseModel, **log_fields: str) -> ApiResponse:
    return ApiResponse(200, model.model_dump_json().encode(), _JSON, log=log_fields)


def _parse(request: ApiRequest, model: type[_M]) -> _M:
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type != _JSON:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type must be {_JSON}, not {request.content_type or 'missing'}",
        )
    try:
        return model.model_validate_json(request.body)
    except ValidationError as exc:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error["loc"]) or "body"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            parts.append(f"{where}: {message}")
        raise ApiError(400, "bad_request", "; ".join(parts)) from None


_Handler = Callable[[ControlPlane, ApiRequest], Awaitable[ApiResponse]]
_ROUTES: Final[dict[str, _Handler]] = {
    REGISTER_PATH: ControlPlane._register,
    DEREGISTER_PATH: ControlPlane._deregister,
    ENDPOINTS_PATH: ControlPlane._endpoints,
    POLICIES_PATH: ControlPlane._policies,
}


def control_plane_for(
    ca_dir: Path,
    config: ControlConfig,
    store: StateStore,
    clock: Clock,
    verify_client: Callable[[ApiRequest, datetime], VerifiedSvid],
) -> ControlPlane:
    """The control plane of a CA directory: its store, `[control]` and policy directory."""
    policy_dir = None
    if config.policy_dir is not None:
        policy_dir = Path(config.policy_dir)
        policy_dir = policy_dir if policy_dir.is_absolute() else ca_dir / policy_dir
    return ControlPlane(
        control_store(store), config, policy_dir, clock, verify_client, store.is_revoked
    )
