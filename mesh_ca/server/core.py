"""The CA API as a pure core: a parsed request in, a response out. No trio, no sockets.

The shell (`mesh_ca.server.http`) parses HTTP and TLS and hands over an `ApiRequest` with
the client's certificate (if it sent one). A request goes through named stages, each in a
module of its own:

    route (`routing`, over `_ROUTES` below)
      -> throttle (`throttle`: the per-source rate limit of issuance)
      -> authenticate (`authenticate`: the caller's ID from its verified client SVID)
      -> parse body (`request_body`: JSON into the pydantic model, 415/400)
      -> authorize (`authorize`: issuable IDs, revocable IDs, admins)
      -> sign (`signing`: CSR checks, the leaf and its ledger row)
      -> store step (`store_steps`: a `StoreStep` run alone or grouped in one transaction)
      -> respond (`svid_response`, `messages.error_response`)

The handlers (`endpoints/`) call the stages they need in that order; `CaService` holds the
stages and runs a request through route, handler and store step. Handlers are synchronous;
the shell runs the ones that touch the store (`is_blocking`) in a worker thread, or inline
with group commit: `begin` does everything up to the store write and returns the rest as a
`StoreStep`, and `run_steps` runs the steps of several concurrent requests in one store
transaction (`GroupingStore.group`). Time is a parameter.

Consistency (nothing half-written):
- A CSR and the request body are checked before any state changes, so bad input never
  consumes a token or writes the ledger.
- Bootstrap is one store transaction (`StateStore.redeem_token`): consume the token,
  check the bound ID's revocation, sign, write the ledger row. Of concurrent uses of one
  token exactly one gets past the consume step; if anything after it fails (revoked or
  reserved ID, signing, the ledger write) the whole transaction rolls back and the token
  stays unused. A token is never usable twice.
- Renewal signs, then records the row unless the ID or the presented certificate is
  revoked, in one atomic store step (`StateStore.record_renewal`).
- A certificate is returned only after its ledger row is committed; a certificate whose
  row could not be written is dropped, never sent. With group commit that is the group's
  commit: if it fails, every request in the group is answered 503 and none was recorded.

To add an endpoint: write its handler (``(service, request, now, monotonic) -> ApiResponse |
StoreStep``) in `endpoints/` and add a line to `_ROUTES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, TypeVar, final

from pydantic import BaseModel

from mesh_ca.control.mesh_window import MeshWindow
from mesh_ca.control.report_intake import ReportIntake
from mesh_ca.control.report_wire import REPORT_PATH
from mesh_ca.server.authenticate import ClientAuthenticator
from mesh_ca.server.endpoints import admin_api, bootstrap, renew, report, status, trust
from mesh_ca.server.loaded_ca import CA_SERVER_PATH, CaAuthority, ca_server_id
from mesh_ca.server.messages import (
    INTERNAL_ERROR,
    ApiError,
    ApiRequest,
    ApiResponse,
    StoreStep,
    error_response,
)
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.ratelimit import RateLimiter
from mesh_ca.server.request_body import parse_body
from mesh_ca.server.routing import Handler, Route, route
from mesh_ca.server.signing import LeafSigning
from mesh_ca.server.store_steps import StoreSteps
from mesh_ca.server.svid_response import SvidResponder
from mesh_ca.server.throttle import IssuanceThrottle
from mesh_ca.store import StateStore
from meshgate.identity import SpiffeId, VerifiedSvid

__all__ = [
    "CA_SERVER_PATH",
    "INTERNAL_ERROR",
    "ApiError",
    "ApiRequest",
    "ApiResponse",
    "CaAuthority",
    "CaService",
    "StoreStep",
    "ca_server_id",
    "error_response",
]

_M = TypeVar("_M", bound=BaseModel)


@final
class CaService:
    """Routes CA API requests and holds the stages their handlers use. Thread-safe: handlers
    may run in worker threads."""

    def __init__(
        self,
        authority: CaAuthority,
        store: StateStore,
        limiter: RateLimiter,
        metrics: CaMetrics | None = None,
        reports: ReportIntake | None = None,
    ) -> None:
        self.authority = authority
        self.store = store
        self.metrics = metrics or CaMetrics()
        # Sidecar reports (mesh_ca.control): a fresh window when the caller brings none.
        self.reports = reports or ReportIntake(MeshWindow())
        self._limiter = limiter
        self.throttle = IssuanceThrottle(limiter, self.metrics)
        self.clients = ClientAuthenticator(authority)
        self.signing = LeafSigning(authority)
        self.responder = SvidResponder(authority)
        self.steps = StoreSteps(store, self.metrics)
        self.bundle_pem = authority.bundle.roots_pem()
        self.bundle_json = json.dumps(authority.bundle.to_spiffe_json()).encode()
        # The foreign trust domains' bundles (`mesh_ca.federation`), replaced whole.
        self.federated_json = b'{"trust_domains": {}}'
        # Records a sidecar's reported bundle sequence (`mesh_ca.store.trust`); None: the
        # report is acknowledged but not kept.
        self.bundle_reporter: Callable[[SpiffeId, int, datetime], None] | None = None

    def publish_federated(self, document: bytes) -> None:
        """Serve `document` at /v1/federation/bundles from now on (one reference swap)."""
        self.federated_json = document

    def with_authority(self, authority: CaAuthority) -> CaService:
        """A service for a new authority (a rotation step), sharing store, limits, metrics
        and the sidecar reports' window."""
        service = CaService(authority, self.store, self._limiter, self.metrics, self.reports)
        service.bundle_reporter = self.bundle_reporter
        service.federated_json = self.federated_json  # the foreign bundles stay served
        return service

    # Routing

    def route(self, method: str, path: str) -> tuple[Handler, bool]:
        """The handler for (method, path) and whether it blocks (store or signing)."""
        return route(_ROUTES, method, path)

    def is_blocking(self, method: str, path: str) -> bool:
        try:
            return self.route(method, path)[1]
        except ApiError:
            return False

    def handle(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        """One request to one response; every refusal is an `ApiResponse` with an error body."""
        outcome = self.begin(request, now, monotonic)
        if isinstance(outcome, StoreStep):
            outcome = self.steps.finish(outcome)
        return self.settle(request, outcome)

    def begin(
        self, request: ApiRequest, now: datetime, monotonic: float
    ) -> ApiResponse | StoreStep:
        """`handle` up to the store write of an issuance: a response, or the `StoreStep`
        that finishes it. Bad input is refused here, before the store is touched."""
        try:
            handler, blocking = self.route(request.method, request.path)
        except ApiError as exc:
            return error_response(exc)
        return self.steps.guarded(lambda: handler(self, request, now, monotonic), blocking=blocking)

    def run_steps(self, steps: Sequence[StoreStep]) -> list[ApiResponse]:
        """Finish the steps of several requests, in one store transaction when the store can
        (group commit: one commit, one fsync). See `StoreSteps.run_steps`."""
        return self.steps.run_steps(steps)

    def settle(self, request: ApiRequest, response: ApiResponse) -> ApiResponse:
        """Count a finished issuance request in the metrics; returns `response`."""
        kind = _ISSUANCE_KINDS.get(request.path)
        if kind is not None:
            result = "ok" if response.status == 200 else response.log.get("error", "error")
            self.metrics.count_issuance(kind, result)
        return response

    # The stages under their old names, for handlers written as methods of this class.

    def _client_svid(self, request: ApiRequest, now: datetime) -> VerifiedSvid:
        return self.clients.client_svid(request, now)

    def _admin(self, request: ApiRequest, now: datetime) -> SpiffeId:
        return admin_api.admin(self, request, now)

    def _rate_limit(self, request: ApiRequest, monotonic: float) -> None:
        self.throttle.admit(request, monotonic)

    @staticmethod
    def _body(request: ApiRequest, model: type[_M]) -> _M:
        return parse_body(request, model)


# path -> (method, handler, blocking: it touches the store or signs)
_ROUTES: Final[dict[str, Route]] = {
    "/healthz": ("GET", status.healthz, False),
    "/metrics": ("GET", status.metrics, False),
    "/readyz": ("GET", status.readyz, True),
    "/v1/bundle": ("GET", trust.bundle, False),
    "/v1/bundle.pem": ("GET", trust.bundle_pem, False),
    "/v1/bundle/held": ("POST", trust.bundle_held, True),
    "/v1/federation/bundles": ("GET", trust.federated_bundles, False),
    "/v1/revocations": ("GET", trust.revocations, True),
    "/v1/bootstrap": ("POST", bootstrap.bootstrap, True),
    "/v1/renew": ("POST", renew.renew, True),
    "/v1/admin/tokens": ("POST", admin_api.create_token, True),
    "/v1/admin/revoke": ("POST", admin_api.revoke, True),
    REPORT_PATH: ("POST", report.report, False),
}
_ISSUANCE_KINDS: Final = {"/v1/bootstrap": "bootstrap", "/v1/renew": "renew"}
