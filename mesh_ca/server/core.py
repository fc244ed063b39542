"""The CA API as a pure core: a parsed request in, a response out. No trio, no sockets.

The shell (`mesh_ca.server.http`) parses HTTP and TLS and hands over an `ApiRequest` with
the client's certificate (if it sent one); `CaService.handle` routes it, checks it and
calls the state store and the signer, and returns an `ApiResponse`. Handlers are
synchronous; the shell runs the ones that touch the store (`is_blocking`) in a worker
thread, or inline with group commit: `begin` does everything up to the store write and
returns the rest as a `StoreStep`, and `run_steps` runs the steps of several concurrent
requests in one store transaction (`GroupingStore.group`). Time is a parameter.

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
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar, final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ValidationError

from mesh_ca.api import (
    BootstrapRequest,
    BundleHeldRequest,
    BundleHeldResponse,
    ErrorResponse,
    RenewRequest,
    RevocationsResponse,
    RevokeRequest,
    RevokeResponse,
    TokenCreateRequest,
    TokenCreateResponse,
    reserved_revocation,
)
from mesh_ca.control.mesh_window import MeshWindow
from mesh_ca.control.report_intake import ReportIntake, ReportRefused
from mesh_ca.control.report_wire import REPORT_PATH
from mesh_ca.issuance import (
    MAX_LEAF_TTL,
    MIN_LEAF_TTL,
    CaKeyReuse,
    IssuanceError,
    Signer,
    check_not_ca_key,
    issue_leaf,
    parse_csr_key,
)
from mesh_ca.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.ratelimit import RateLimiter, source_key
from mesh_ca.store import (
    GroupingStore,
    IdRevoked,
    IssuedRecord,
    KeyBound,
    StateStore,
    StoreError,
    StoreUnavailable,
    TokenError,
    TokenFailure,
    TokenWrongId,
)
from mesh_ca.tokens import TokenFormatError, new_token, parse_token
from meshgate.errors import ProtocolError
from meshgate.identity import (
    BundleSet,
    SpiffeId,
    SpiffeIdError,
    SvidError,
    SvidFailure,
    TrustBundle,
    TrustDomain,
    VerifiedSvid,
    verify_svid,
)
from meshgate.keys import public_key_der, public_key_sha256

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
]

CA_SERVER_PATH: Final = "/mesh/ca"
JSON: Final = "application/json"
PEM: Final = "application/x-pem-file"
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")
_VERIFIED_CACHE_SIZE: Final = 4096
_VERIFIED_PRUNE_FLOOR: Final = 64
_STORE_RETRY_SECONDS: Final = 5


def ca_server_id(trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID the CA server presents; clients authenticate the CA by it."""
    return SpiffeId(trust_domain, CA_SERVER_PATH)


class ApiError(ProtocolError):
    """A refusal with an HTTP status, a short stable code and a message for the client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        log: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.log = dict(log or {})  # public facts for the access log line


# A bug or an unforeseen error in a handler: answered, logged by the shell, never a crash.
INTERNAL_ERROR: Final = ApiError(500, "internal_error", "the CA failed to finish this request")
_STORE_UNAVAILABLE: Final = ApiError(
    503,
    "store_unavailable",
    "the CA state store is unavailable, so this replica cannot issue or check revocations; "
    "nothing was changed; retry later or use another CA replica",
    (("retry-after", str(_STORE_RETRY_SECONDS)),),
)


@final
@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str
    content_type: str | None
    body: bytes
    source: str  # the client's IP address, the rate-limit key
    peer_cert: x509.Certificate | None = None  # the TLS client certificate, if any


@final
@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    # For the access log only: public facts (peer ID, issued ID, serial, token id).
    log: Mapping[str, str] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class StoreStep:
    """The rest of an issuance request once everything before its store write is done:
    `run` writes the store and returns the response. `durable`: the write consumes a token
    (it needs a durable commit). The shell runs it alone or grouped (`CaService.run_steps`)."""

    run: Callable[[], ApiResponse]
    durable: bool


@final
@dataclass(frozen=True)
class CaAuthority:
    """What the API needs from a loaded CA directory."""

    trust_domain: TrustDomain
    signer: Signer
    bundle: TrustBundle
    leaf_ttl: timedelta
    token_ttl: timedelta
    admin_ids: frozenset[SpiffeId] = frozenset()
    replica: str = ""
    # The configured leaf lifetime bounds (issuance.min_ttl_seconds / max_ttl_seconds).
    min_leaf_ttl: timedelta = MIN_LEAF_TTL
    max_leaf_ttl: timedelta = MAX_LEAF_TTL

    @property
    def bundles(self) -> BundleSet:
        return BundleSet.of(self.bundle)


def _json(model: BaseModel, **log: str) -> ApiResponse:
    return ApiResponse(200, model.model_dump_json().encode(), log=log)


def error_response(exc: ApiError, **log: str) -> ApiResponse:
    body = ErrorResponse(error=exc.code, message=exc.message[:1024]).model_dump_json().encode()
    return ApiResponse(
        exc.status, body, headers=exc.headers, log={"error": exc.code, **exc.log, **log}
    )


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


_Csr = tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey]
_Handler = Callable[["CaService", ApiRequest, datetime, float], "ApiResponse | StoreStep"]


@final
class CaService:
    """Routes and handles CA API requests. Thread-safe: handlers may run in worker threads."""

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
        self._limiter_lock = threading.Lock()
        self._verified: dict[x509.Certificate, VerifiedSvid] = {}
        self._prune_verified_at = _VERIFIED_PRUNE_FLOOR  # size that triggers a sweep
        # Keys no workload may present: the signer, its chain and every root of the bundle.
        self._ca_keys = authority.signer.ca_public_keys | {
            public_key_der(cert.public_key())
            for cert in (*authority.bundle.roots, *authority.bundle.intermediates)
        }
        # Records a sidecar's reported bundle sequence (`mesh_ca.store.trust`); None: the
        # report is acknowledged but not kept.
        self.bundle_reporter: Callable[[SpiffeId, int, datetime], None] | None = None
        self._store_up = True  # what metrics.store_up says; set only when it changes
        self._chain_tail_pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (authority.signer.cert, *authority.signer.chain)
        ).decode("ascii")
        self._bundle_pem = authority.bundle.roots_pem()
        self._bundle_pem_text = self._bundle_pem.decode("ascii")
        self._bundle_json = json.dumps(authority.bundle.to_spiffe_json()).encode()
        # The SVID response body is assembled from bytes: the chain tail and the bundle are
        # the same in every response, so their JSON-escaped forms are made once here.
        # (`SvidResponse` stays the schema; a test checks the bytes against it.)
        self._chain_tail_json = json.dumps(self._chain_tail_pem)[1:-1].encode("ascii")
        self._svid_bundle_json = (
            b'","bundle_pem":' + json.dumps(self._bundle_pem_text).encode("ascii") + b',"serial":"'
        )
        # The foreign trust domains' bundles (`mesh_ca.federation`), replaced whole.
        self._federated_json = b'{"trust_domains": {}}'

    def publish_federated(self, document: bytes) -> None:
        """Serve `document` at /v1/federation/bundles from now on (one reference swap)."""
        self._federated_json = document

    def with_authority(self, authority: CaAuthority) -> CaService:
        """A service for a new authority (a rotation step), sharing store, limits, metrics
        and the sidecar reports' window."""
        service = CaService(authority, self.store, self._limiter, self.metrics, self.reports)
        service.bundle_reporter = self.bundle_reporter
        service._federated_json = self._federated_json  # the foreign bundles stay served
        return service

    # Routing

    def route(self, method: str, path: str) -> tuple[_Handler, bool]:
        """The handler for (method, path) and whether it blocks (store or signing)."""
        entry = _ROUTES.get(path)
        if entry is None:
            raise ApiError(404, "not_found", f"no endpoint {path}")
        want, handler, blocking = entry
        if method != want:
            raise ApiError(
                405, "method_not_allowed", f"{path} takes {want}, not {method}", (("allow", want),)
            )
        return handler, blocking

    def is_blocking(self, method: str, path: str) -> bool:
        try:
            return self.route(method, path)[1]
        except ApiError:
            return False

    def handle(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        """One request to one response; every refusal is an `ApiResponse` with an error body."""
        outcome = self.begin(request, now, monotonic)
        if isinstance(outcome, StoreStep):
            outcome = self._finish(outcome)
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
        return self._guarded(lambda: handler(self, request, now, monotonic), blocking=blocking)

    def run_steps(self, steps: Sequence[StoreStep]) -> list[ApiResponse]:
        """Finish the steps of several requests, in one store transaction when the store can
        (group commit: one commit, one fsync). A step that fails is answered alone; if the
        group's commit fails, every step is answered 503 (none of them was recorded)."""
        if not isinstance(self.store, GroupingStore) or len(steps) == 1:
            return [self._finish(step) for step in steps]
        try:
            with self.store.group(durable=any(step.durable for step in steps)):
                responses = [self._finish(step) for step in steps]
        except StoreUnavailable as exc:
            return [self._store_failed(exc)] * len(steps)
        return responses

    def settle(self, request: ApiRequest, response: ApiResponse) -> ApiResponse:
        """Count a finished issuance request in the metrics; returns `response`."""
        kind = _ISSUANCE_KINDS.get(request.path)
        if kind is not None:
            result = "ok" if response.status == 200 else response.log.get("error", "error")
            self.metrics.count_issuance(kind, result)
        return response

    def _finish(self, step: StoreStep) -> ApiResponse:
        """`step.run()`, its refusals as responses; a store error the step did not answer
        itself (an integrity error, a duplicate serial) is a 500: nothing was recorded."""

        def run() -> ApiResponse:
            try:
                return step.run()
            except StoreUnavailable:
                raise
            except StoreError as exc:
                raise ApiError(
                    500, "ledger_failed", f"cannot record the certificate: {exc}"
                ) from None

        return self._guarded(run, blocking=True)

    def _guarded(self, call: Callable[[], _T], *, blocking: bool) -> _T | ApiResponse:
        """`call()`, its refusals turned into error responses."""
        try:
            outcome = call()
        except ApiError as exc:
            return error_response(exc)
        except StoreUnavailable as exc:
            return self._store_failed(exc)
        if blocking and not self._store_up and not isinstance(outcome, StoreStep):
            self._store_up = True
            self.metrics.store_up.set(1)
        return outcome

    def _store_failed(self, exc: StoreUnavailable) -> ApiResponse:
        self._store_up = False
        self.metrics.store_up.set(0)
        # The detail (database address, driver text) goes to the access log only.
        return error_response(_STORE_UNAVAILABLE, detail=str(exc)[:300])

    # Checks shared by handlers

    def _rate_limit(self, request: ApiRequest, monotonic: float) -> None:
        key = source_key(request.source)
        with self._limiter_lock:
            if self._limiter.allow(key, monotonic):
                return
            wait = self._limiter.retry_after(key)
        seconds = max(1, round(wait + 0.5))
        self.metrics.rate_limited.inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many issuance requests from {request.source}; retry in {seconds} s",
            (("retry-after", str(seconds)),),
        )

    @staticmethod
    def _body(request: ApiRequest, model: type[_M]) -> _M:
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type != JSON:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"content-type must be {JSON}, not {request.content_type or 'missing'}",
            )
        try:
            return model.model_validate_json(request.body)
        except ValidationError as exc:
            raise ApiError(400, "bad_request", _validation_summary(exc)) from None

    def _check_issuable(self, spiffe_id: SpiffeId) -> None:
        if spiffe_id.trust_domain != self.authority.trust_domain:
            raise ApiError(
                403,
                "wrong_trust_domain",
                f"{spiffe_id} is not in trust domain {self.authority.trust_domain}",
            )
        if spiffe_id.reserved or not spiffe_id.path:
            raise ApiError(403, "reserved_id", f"{spiffe_id} is reserved for the mesh itself")

    def _check_revocable(self, spiffe_id: SpiffeId) -> None:
        """A workload ID of this trust domain (as `mesh-ca revoke` checks): any other would
        match no certificate of this CA, yet go to every sidecar in the revocation list."""
        if not spiffe_id.member_of(self.authority.trust_domain):
            raise ApiError(
                400,
                "bad_request",
                f"spiffe_id: {spiffe_id} is not in trust domain {self.authority.trust_domain}",
            )
        if not spiffe_id.path:
            raise ApiError(
                400, "bad_request", f"spiffe_id: {spiffe_id} names the trust domain, not a workload"
            )
        if spiffe_id.reserved:
            raise ApiError(400, "bad_request", f"spiffe_id: {reserved_revocation(spiffe_id)}")

    def _client_svid(self, request: ApiRequest, now: datetime) -> VerifiedSvid:
        """The verified client SVID. Fails closed: no or bad certificate is a refusal."""
        cert = request.peer_cert
        if cert is None:
            raise ApiError(401, "client_cert_required", "this endpoint needs a client SVID (mTLS)")
        # Path validation costs about as much as signing; a keep-alive client sends the same
        # certificate again and again. Only a full success is cached, and the validity window
        # is still checked at every `now`.
        cached = self._verified.get(cert)
        if cached is not None and cert.not_valid_before_utc <= now <= cached.not_after:
            return cached
        try:
            svid = verify_svid(cert, (self.authority.signer.cert,), self.authority.bundles, now)
        except SvidError as exc:
            code = "svid_expired" if exc.reason is SvidFailure.EXPIRED else "svid_invalid"
            raise ApiError(403, code, str(exc)) from None
        with self._limiter_lock:
            verified = self._verified
            if len(verified) >= self._prune_verified_at:
                # Every renewal brings a new certificate and each stayed until the cache
                # was full (~4 KB a certificate issued): drop the expired ones as we go.
                for old in [c for c, v in verified.items() if v.not_after < now]:
                    del verified[old]
                if len(verified) >= _VERIFIED_CACHE_SIZE:
                    verified.clear()
                self._prune_verified_at = max(_VERIFIED_PRUNE_FLOOR, 2 * len(verified))
            verified[cert] = svid
        return svid

    def _sign(
        self, csr: _Csr, spiffe_id: SpiffeId, kind: str, now: datetime
    ) -> tuple[x509.Certificate, IssuedRecord]:
        """Sign a leaf for a CSR that `parse_csr` checked, and the ledger row describing it."""
        self._check_issuable(spiffe_id)
        serial = secrets.randbits(127) | (1 << 126)  # 127-bit positive, never 0
        try:
            leaf = issue_leaf(
                csr[0],
                spiffe_id,
                self.authority.signer,
                now,
                self.authority.leaf_ttl,
                serial=serial,
                csr_verified=True,
                min_ttl=self.authority.min_leaf_ttl,
                max_ttl=self.authority.max_leaf_ttl,
                public_key=csr[1],
            )
        except IssuanceError as exc:
            raise ApiError(503, "signing_failed", f"the CA cannot sign: {exc}") from None
        record = IssuedRecord(
            serial,
            spiffe_id,
            kind,
            now,
            leaf.not_valid_after_utc,
            self.authority.replica,
            public_key_sha256(csr[1]),
        )
        return leaf, record

    def _svid_response(
        self, leaf: x509.Certificate, record: IssuedRecord, **log: str
    ) -> ApiResponse:
        """The `SvidResponse` JSON, built from bytes (pydantic validation and serialization
        of the model cost ~60 µs a response). The leaf PEM needs only its newlines escaped;
        the SPIFFE ID was parsed strictly (no quote or backslash can occur); not_after has
        whole seconds, in UTC, as pydantic writes it."""
        serial = format(record.serial, "x")
        spiffe_id = str(record.spiffe_id)
        body = b"".join(
            (
                b'{"spiffe_id":"',
                spiffe_id.encode("ascii"),
                b'","chain_pem":"',
                leaf.public_bytes(serialization.Encoding.PEM).replace(b"\n", b"\\n"),
                self._chain_tail_json,
                self._svid_bundle_json,
                serial.encode("ascii"),
                b'","not_after":"',
                _utc_text(record.not_after).encode("ascii"),
                b'"}',
            )
        )
        return ApiResponse(200, body, log={"spiffe_id": spiffe_id, "serial": serial, **log})

    def _csr(self, text: str) -> _Csr:
        """The parsed CSR; refused (400) if bad or over one of the CA's own keys."""
        try:
            csr = parse_csr_key(text)
            check_not_ca_key(csr[1], self._ca_keys)
        except CaKeyReuse as exc:
            raise ApiError(400, "ca_key", str(exc)) from None
        except IssuanceError as exc:
            raise ApiError(400, "bad_csr", str(exc)) from None
        return csr

    # Handlers

    def _healthz(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        return ApiResponse(200, b'{"status":"ok"}')

    def _readyz(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        self.store.ping()
        if now >= self.authority.signer.not_after:
            raise ApiError(503, "signer_expired", "the signing CA certificate has expired")
        return ApiResponse(200, b'{"status":"ready"}')

    def _metrics(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        return ApiResponse(200, self.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    def _bundle(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        return ApiResponse(200, self._bundle_json)

    def _federated_bundles(
        self, request: ApiRequest, now: datetime, monotonic: float
    ) -> ApiResponse:
        """The bundles of the trust domains this mesh federates with, each under its name:
        what sidecars add to their own bundle. Public, like the bundle itself."""
        return ApiResponse(200, self._federated_json)

    def _bundle_pem_route(
        self, request: ApiRequest, now: datetime, monotonic: float
    ) -> ApiResponse:
        return ApiResponse(200, self._bundle_pem, content_type=PEM)

    def _bundle_held(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        svid = self._client_svid(request, now)
        body = self._body(request, BundleHeldRequest)
        reporter = self.bundle_reporter
        if reporter is not None:
            reporter(svid.spiffe_id, body.sequence, now)
        current = self.authority.bundle.sequence or 0
        response = BundleHeldResponse(recorded=reporter is not None, sequence=current)
        return _json(response, peer=str(svid.spiffe_id), held=str(body.sequence))

    def _revocations(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        revocations = self.store.revocations()
        body = RevocationsResponse(
            spiffe_ids=tuple(str(r.spiffe_id) for r in revocations if r.spiffe_id is not None),
            serials=tuple(format(r.serial, "x") for r in revocations if r.serial is not None),
            sequence=len(revocations),
            updated_at=max((r.revoked_at for r in revocations), default=None),
        )
        return _json(body)

    def _bootstrap(self, request: ApiRequest, now: datetime, monotonic: float) -> StoreStep:
        self._rate_limit(request, monotonic)
        body = self._body(request, BootstrapRequest)
        try:
            token_id, secret_hash = parse_token(body.token)
        except TokenFormatError as exc:
            self.metrics.token_failures.labels("malformed").inc()
            raise ApiError(401, "token_invalid", str(exc)) from None
        csr = self._csr(body.csr)  # before the store is touched: bad input changes nothing
        expected = _parse_id(body.spiffe_id, "spiffe_id") if body.spiffe_id else None

        def redeem() -> ApiResponse:
            signed: list[x509.Certificate] = []

            def issue(spiffe_id: SpiffeId) -> IssuedRecord:
                # Runs inside the store's transaction; raising here rolls the token back.
                leaf, record = self._sign(csr, spiffe_id, "bootstrap", now)
                signed.append(leaf)  # a retried transaction signs again: the last one counts
                return record

            try:
                record = self.store.redeem_token(
                    token_id, secret_hash, now, issue, expected=expected
                )
            except TokenError as exc:
                self.metrics.token_failures.labels(exc.reason.value).inc()
                status, code = {
                    TokenFailure.UNKNOWN: (401, "token_unknown"),
                    TokenFailure.USED: (403, "token_used"),
                    TokenFailure.EXPIRED: (403, "token_expired"),
                }[exc.reason]
                raise ApiError(
                    status, code, f"join token {token_id} refused: {exc.reason}"
                ) from None
            except TokenWrongId as exc:
                # Refused before anything is signed; the token stays usable by its own ID.
                self.metrics.token_failures.labels("wrong_id").inc()
                raise ApiError(
                    403,
                    "token_wrong_id",
                    f"join token {token_id} is bound to {exc.bound}, but the request expects "
                    f"{exc.expected}; the token was not used",
                    log={
                        "token_id": token_id,
                        "spiffe_id": str(exc.bound),
                        "expected_id": str(exc.expected),
                    },
                ) from None
            except IdRevoked as exc:
                raise ApiError(403, "revoked", f"{exc.spiffe_id} is revoked") from None
            except KeyBound as exc:
                raise _key_bound(exc) from None
            return self._svid_response(signed[-1], record, token_id=token_id)

        return StoreStep(redeem, durable=True)

    def _renew(self, request: ApiRequest, now: datetime, monotonic: float) -> StoreStep:
        self._rate_limit(request, monotonic)
        svid = self._client_svid(request, now)
        self._check_issuable(svid.spiffe_id)
        body = self._body(request, RenewRequest)
        csr = self._csr(body.csr)
        # Sign first, then record unless revoked, in one store step: a revoked peer costs
        # one wasted signature, every other renewal one round trip less.
        leaf, record = self._sign(csr, svid.spiffe_id, "renew", now)

        def record_renewal() -> ApiResponse:
            try:
                self.store.record_renewal(record, svid.leaf.serial_number)
            except IdRevoked:
                raise ApiError(
                    403, "revoked", f"{svid.spiffe_id} (or its certificate) is revoked"
                ) from None
            except KeyBound as exc:
                raise _key_bound(exc) from None
            return self._svid_response(
                leaf,
                record,
                peer=str(svid.spiffe_id),
                peer_serial=format(svid.leaf.serial_number, "x"),
            )

        return StoreStep(record_renewal, durable=False)

    def _report(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        """A sidecar's per-edge deltas and status (`mesh_ca.control.report_intake`), under
        the ID of its verified client SVID."""
        svid = self._client_svid(request, now)
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type != JSON:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"content-type must be {JSON}, not {request.content_type or 'missing'}",
            )
        caller = str(svid.spiffe_id)
        try:
            validity = (svid.leaf.not_valid_before_utc, svid.not_after)
            body = self.reports.accept(
                caller, validity, request.source, request.body, now, monotonic
            )
        except ReportRefused as exc:
            peer = {"peer": caller}
            raise ApiError(exc.status, exc.code, exc.message, exc.headers, peer) from None
        return ApiResponse(200, body, log={"peer": caller})

    def _admin(self, request: ApiRequest, now: datetime) -> SpiffeId:
        """The admin's ID. Fails closed: only IDs listed in server.admin_ids, never any SVID."""
        svid = self._client_svid(request, now)
        if svid.spiffe_id not in self.authority.admin_ids:
            raise ApiError(403, "not_admin", f"{svid.spiffe_id} is not a CA admin")
        if self.store.is_revoked(svid.spiffe_id, svid.leaf.serial_number):
            raise ApiError(403, "revoked", f"{svid.spiffe_id} is revoked")
        return svid.spiffe_id

    def _create_token(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        admin = self._admin(request, now)
        body = self._body(request, TokenCreateRequest)
        spiffe_id = _parse_id(body.spiffe_id, "spiffe_id")
        try:
            self._check_issuable(spiffe_id)
        except ApiError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        ttl = timedelta(seconds=body.ttl_seconds) if body.ttl_seconds else self.authority.token_ttl
        token, token_id, secret_hash = new_token()
        self.store.add_token(token_id, secret_hash, spiffe_id, now, now + ttl)
        response = TokenCreateResponse(
            token=token, token_id=token_id, spiffe_id=str(spiffe_id), expires_at=now + ttl
        )
        return _json(response, peer=str(admin), token_id=token_id, spiffe_id=str(spiffe_id))

    def _revoke(self, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
        admin = self._admin(request, now)
        body = self._body(request, RevokeRequest)
        spiffe_id = _parse_id(body.spiffe_id, "spiffe_id") if body.spiffe_id else None
        if spiffe_id is not None:
            self._check_revocable(spiffe_id)
        serial = int(body.serial, 16) if body.serial else None
        if serial == 0:
            raise ApiError(400, "bad_request", "serial: must be positive")
        revocation = self.store.revoke(now, spiffe_id=spiffe_id, serial=serial, reason=body.reason)
        response = RevokeResponse(
            spiffe_id=str(revocation.spiffe_id) if revocation.spiffe_id else None,
            serial=format(revocation.serial, "x") if revocation.serial else None,
            revoked_at=revocation.revoked_at,
            reason=revocation.reason,
        )
        return _json(response, peer=str(admin), revoked=body.spiffe_id or body.serial or "")


def _key_bound(exc: KeyBound) -> ApiError:
    """The refusal for a key bound to another ID. The other ID is not named: the requester
    only learns the key is taken (the CA's log has both, through the store error)."""
    return ApiError(
        409,
        "key_bound",
        f"the CSR's public key is already bound to another SPIFFE ID than {exc.spiffe_id}; "
        "generate a new key for this workload",
        log={"bound_to": str(exc.bound_to)},
    )


def _utc_text(when: datetime) -> str:
    """RFC 3339 UTC as pydantic serializes an aware datetime (``...Z``, microseconds if any)."""
    text = when.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"


def _parse_id(text: str, where: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise ApiError(400, "bad_request", f"{where}: {exc}") from None


_ROUTES: Final[dict[str, tuple[str, _Handler, bool]]] = {
    "/healthz": ("GET", CaService._healthz, False),
    "/metrics": ("GET", CaService._metrics, False),
    "/readyz": ("GET", CaService._readyz, True),
    "/v1/bundle": ("GET", CaService._bundle, False),
    "/v1/bundle.pem": ("GET", CaService._bundle_pem_route, False),
    "/v1/bundle/held": ("POST", CaService._bundle_held, True),
    "/v1/federation/bundles": ("GET", CaService._federated_bundles, False),
    "/v1/revocations": ("GET", CaService._revocations, True),
    "/v1/bootstrap": ("POST", CaService._bootstrap, True),
    "/v1/renew": ("POST", CaService._renew, True),
    "/v1/admin/tokens": ("POST", CaService._create_token, True),
    "/v1/admin/revoke": ("POST", CaService._revoke, True),
    REPORT_PATH: ("POST", CaService._report, False),
}
_ISSUANCE_KINDS: Final = {"/v1/bootstrap": "bootstrap", "/v1/renew": "renew"}
