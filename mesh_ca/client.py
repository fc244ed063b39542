"""The CA client that sidecars use: bootstrap, renew, bundle and revocations over HTTPS (trio),
and `call` for the control-plane routes (mTLS as the sidecar's current SVID).

The CA server is authenticated by its SPIFFE ID (``spiffe://TD/mesh/ca``) with `peer_svid`
against the bundle this client was given, never by hostname. Addresses are tried in
order; the next one is tried when one cannot be reached, fails TLS, presents the wrong
identity, or answers anything but 200 or 4xx (5xx, a redirect, garbage). Connections are
kept alive and reused (one pool per address and client certificate, closed once a renewal
supersedes that certificate). Every issued SVID is
verified before it is returned: the leaf holds the public key we sent, carries the expected
SPIFFE ID, and chains to the returned bundle.

Errors: `CaClientError` when the CA refused the request (4xx; retrying the same request
will not help), `CaUnavailable` (a subclass) when it could not be reached or failed
(connect, TLS, timeout, 5xx, any other status but 200, an unusable answer): retry with
backoff. Nothing else escapes: an answer that breaks a parser is an unusable answer.

Why one module: `CaClient` is one pool of kept-alive connections and one request loop
(address failover, stale-connection retry, SPIFFE-ID check of the server) that every call
goes through; the calls themselves are a few lines each. Split, the pool state would have
to be shared across files.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, final

import h11
import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import ValidationError

from mesh_ca.api import BundleHeldResponse, ErrorResponse, RevocationsResponse, SvidResponse
from mesh_ca.control.report_wire import REPORT_PATH
from mesh_ca.issuance import make_csr
from meshgate.clock import Clock, SystemClock
from meshgate.errors import MeshgateError, StaleConnectionError
from meshgate.identity import (
    BundleError,
    BundleSet,
    SpiffeId,
    SpiffeIdError,
    SvidError,
    SvidFailure,
    TrustBundle,
    TrustDomain,
    check_leaf_profile,
    load_pem_certificates,
    spiffe_id_of,
    verify_svid,
)
from meshgate.identity.federation import FederationError, parse_federated_bundles
from meshgate.keys import PrivateKey, private_key_pem
from meshgate.transport.mtls import client_context, peer_svid

__all__ = ["CaClient", "CaClientError", "CaUnavailable", "IssuedSvid"]

CA_SERVER_PATH: Final = "/mesh/ca"
_MAX_RESPONSE_BYTES: Final = 1024 * 1024
_MAX_IDLE_PER_POOL: Final = 16
_MAX_CLIENT_CONTEXTS: Final = 8


class CaClientError(MeshgateError):
    """The CA refused the request (4xx) or the answer was refused; `code` says why."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        what = "refused" if status else "error"
        if isinstance(self, CaUnavailable):
            what = "unavailable"  # its answer, if any, was not usable: never a refusal
        super().__init__(f"CA {what} ({status or '-'} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class CaUnavailable(CaClientError):  # noqa: N818 - the name the sidecar codes against
    """No CA address could serve the request (connect, TLS, identity, timeout, 5xx, any
    other answer that is neither 200 nor 4xx, a 200 whose body is unusable)."""


@final
@dataclass(frozen=True)
class IssuedSvid:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]  # leaf first
    bundle: TrustBundle
    not_after: datetime
    serial: int


@dataclass
class _Connection:
    stream: trio.SSLStream[trio.SocketStream]
    http: h11.Connection


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"CA address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _describe(exc: BaseException) -> str:
    """`exc`'s text, else its cause's (trio's BrokenResourceError often has none)."""
    return str(exc) or str(exc.__cause__ or "") or type(exc).__name__


def _refusal(status: int) -> bool:
    """A 4xx is the CA's answer to this request; anything else but 200 is not usable."""
    return 400 <= status < 500


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@final
class CaClient:
    def __init__(
        self,
        addresses: Sequence[str],
        trust_domain: TrustDomain,
        bundles: BundleSet,
        *,
        timeout_seconds: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("CaClient needs at least one CA address")
        self.addresses = tuple(addresses)
        self._targets = [_split_address(a) for a in self.addresses]
        self.trust_domain = trust_domain
        self.bundles = bundles
        self.timeout_seconds = timeout_seconds
        self.clock = clock or SystemClock()
        self.ca_id = SpiffeId(trust_domain, CA_SERVER_PATH)
        if trust_domain not in bundles:
            raise ValueError(f"CaClient: no trust bundle for the CA's trust domain {trust_domain}")
        # OpenSSL may only chain the CA server to its own trust domain's roots, so its path
        # validation already binds the server to this trust domain (see _connect).
        self._ca_bundles = BundleSet.of(bundles[trust_domain])
        self._anonymous = client_context(self._ca_bundles)
        self._contexts: dict[bytes, ssl.SSLContext] = {}
        self._used_by: dict[SpiffeId, bytes] = {}  # the leaf `report` last used per ID
        self._stale: set[bytes] = set()  # leaves superseded since, their pools to close
        self._idle: dict[tuple[int, bytes], list[_Connection]] = {}

    async def __aenter__(self) -> CaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._close_idle(lambda _key: True)

    async def _close_idle(self, which: Callable[[tuple[int, bytes]], bool]) -> None:
        """Close and forget the idle connections of the pools `which` picks."""
        # Take them all out first: closing yields, and other tasks use the pools meanwhile.
        taken = [conn for key in list(self._idle) if which(key) for conn in self._idle.pop(key)]
        for conn in taken:
            await trio.aclose_forcefully(conn.stream)

    # Public API

    async def bootstrap(
        self, token: str, key: PrivateKey, expected: SpiffeId | None = None
    ) -> IssuedSvid:
        """Exchange a one-time join token and a CSR for an SVID. The CA chooses the ID; with
        `expected` it refuses a token bound to another ID without using it up
        (`CaClientError` with code ``token_wrong_id``), and the answer must be for it."""
        request: dict[str, str] = {"token": token, "csr": _csr_pem(key)}
        if expected is not None:
            request["spiffe_id"] = str(expected)
        reply = await self._request("POST", "/v1/bootstrap", json.dumps(request).encode())
        return self._issued(reply, key, expected=expected)

    async def renew(
        self, chain: Sequence[x509.Certificate], key: PrivateKey, new_key: PrivateKey
    ) -> IssuedSvid:
        """A new SVID with the same ID for `new_key`, authenticated by the current one (mTLS)."""
        if not chain:
            raise ValueError("renew needs the current certificate chain")
        leaf = chain[0]
        current = spiffe_id_of(leaf)
        if self.clock.now() > leaf.not_valid_after_utc:
            raise CaClientError(
                None,
                "svid_expired",
                f"the current SVID of {current} expired at {leaf.not_valid_after_utc}; "
                "bootstrap again with a new join token",
            )
        context, fingerprint = self._context_for(chain, key)
        body = json.dumps({"csr": _csr_pem(new_key)}).encode()
        reply = await self._request("POST", "/v1/renew", body, context, fingerprint)
        issued = self._issued(reply, new_key, expected=current)
        # The new SVID supersedes this one: nothing authenticates with it again, so its
        # kept-alive connection goes now (they once piled up in CLOSE-WAIT, one a rotation).
        self._contexts.pop(fingerprint, None)
        await self._close_idle(lambda key: key[1] == fingerprint)
        return issued

    async def report(
        self, body: bytes, chain: Sequence[x509.Certificate], key: PrivateKey
    ) -> bytes:
        """``POST /v1/control/report`` as the SVID `chain` (mTLS); the 200 body. The CA
        takes the caller's ID from this certificate. A refusal is a `CaClientError`."""
        if not chain:
            raise ValueError("report needs the current certificate chain")
        context, fingerprint = self._context_for(chain, key)
        await self.close_superseded()
        reply = await self._request("POST", REPORT_PATH, body, context, fingerprint)
        self._check_ok(reply)
        return reply.body

    def _context_for(
        self, chain: Sequence[x509.Certificate], key: PrivateKey
    ) -> tuple[ssl.SSLContext, bytes]:
        """The client context of an SVID, kept per leaf fingerprint (a few at most). When a
        leaf of the same SPIFFE ID supersedes the one this client used before, the old
        one's context and kept-alive connections go (a rotation must not leave a socket)."""
        leaf = chain[0]
        fingerprint = leaf.fingerprint(hashes.SHA256())
        spiffe_id = spiffe_id_of(leaf)
        previous = self._used_by.get(spiffe_id)
        if previous is not None and previous != fingerprint:
            self._contexts.pop(previous, None)
            self._stale.add(previous)
        self._used_by[spiffe_id] = fingerprint
        context = self._contexts.get(fingerprint)
        if context is None:
            context = client_context(self._ca_bundles, _pem(chain), private_key_pem(key))
            if len(self._contexts) >= _MAX_CLIENT_CONTEXTS:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[fingerprint] = context
        return context, fingerprint

    async def report_bundle(
        self, sequence: int, chain: Sequence[x509.Certificate], key: PrivateKey
    ) -> int:
        """Tell the CA which trust bundle (``spiffe_sequence``) this sidecar holds,
        authenticated by its SVID; returns the sequence the CA publishes now."""
        if not chain:
            raise ValueError("report_bundle needs the current certificate chain")
        context, fingerprint = self._context_for(chain, key)
        await self.close_superseded()
        body = json.dumps({"sequence": sequence}).encode()
        reply = await self._request("POST", "/v1/bundle/held", body, context, fingerprint)
        self._check_ok(reply)
        try:
            return BundleHeldResponse.model_validate_json(reply.body).sequence
        except ValidationError as exc:
            raise CaUnavailable(reply.status, "bad_response", f"bundle/held: {exc}") from exc

    async def close_superseded(self) -> None:
        """Close the kept-alive connections of SVIDs a newer one of the same ID replaced."""
        stale, self._stale = self._stale, set()
        if stale:
            await self._close_idle(lambda key: key[1] in stale)

    async def call(
        self,
        path: str,
        body: bytes,
        chain: Sequence[x509.Certificate],
        key: PrivateKey,
        *,
        timeout_seconds: float | None = None,
    ) -> bytes:
        """POST a JSON `body` to `path` over mTLS as the SVID `chain` (the control-plane
        routes: the CA takes the caller's ID from this certificate) and return the 200
        answer's body. `timeout_seconds` bounds the exchange (a long-poll waits longer than
        the default). Like `report`, it closes the pools of SVIDs a rotation superseded."""
        if not chain:
            raise ValueError("call needs the current certificate chain")
        context, fingerprint = self._context_for(chain, key)
        await self.close_superseded()
        reply = await self._request("POST", path, body, context, fingerprint, timeout_seconds)
        self._check_ok(reply)
        return reply.body

    async def fetch_bundle(self) -> TrustBundle:
        reply = await self._request("GET", "/v1/bundle", None)
        self._check_ok(reply)
        try:
            bundle = TrustBundle.from_spiffe_json(self.trust_domain, reply.body)
        except (BundleError, RecursionError) as exc:  # json nests without limit
            raise CaUnavailable(reply.status, "bad_response", f"bundle: {exc}") from exc
        return bundle

    async def fetch_federated_bundles(self) -> BundleSet:
        """The bundles of the foreign trust domains the CA federates with, each checked to
        be for the trust domain it is listed under and never for this one. A CA without
        the endpoint (404) federates with nobody."""
        reply = await self._request("GET", "/v1/federation/bundles", None)
        if reply.status == 404:
            return BundleSet()
        self._check_ok(reply)
        try:
            return parse_federated_bundles(reply.body, self.trust_domain)
        except FederationError as exc:
            raise CaUnavailable(reply.status, "bad_response", str(exc)) from exc

    async def fetch_revocations(self) -> tuple[frozenset[SpiffeId], frozenset[int]]:
        reply = await self._request("GET", "/v1/revocations", None)
        self._check_ok(reply)
        try:
            parsed = RevocationsResponse.model_validate_json(reply.body)
            ids = frozenset(SpiffeId.parse(text) for text in parsed.spiffe_ids)
        except (ValidationError, SpiffeIdError) as exc:
            raise CaUnavailable(reply.status, "bad_response", f"revocations: {exc}") from exc
        return ids, frozenset(int(s, 16) for s in parsed.serials)

    async def health(self) -> bool:
        try:
            reply = await self._request("GET", "/healthz", None)
        except CaClientError:
            return False
        return reply.status == 200

    # Responses

    def _check_ok(self, reply: _Reply) -> None:
        if reply.status == 200:
            return
        try:
            error = ErrorResponse.model_validate_json(reply.body)
            code, message = error.error, error.message
        except ValidationError:
            code, message = "http_error", f"HTTP {reply.status}"
        if reply.status < 400:  # the CA API answers 200 or an error, never 1xx, 2xx or 3xx
            code, message = "http_error", f"unexpected HTTP {reply.status} from the CA"
        kind = CaClientError if _refusal(reply.status) else CaUnavailable
        raise kind(reply.status, code, message)

    def _issued(self, reply: _Reply, key: PrivateKey, expected: SpiffeId | None) -> IssuedSvid:
        """Verify an issued SVID before anyone uses it. Fails closed."""
        self._check_ok(reply)

        def bad(message: str) -> CaUnavailable:
            return CaUnavailable(reply.status, "bad_response", f"issued SVID refused: {message}")

        try:
            parsed = SvidResponse.model_validate_json(reply.body)
            chain = tuple(load_pem_certificates(parsed.chain_pem.encode(), what="chain_pem"))
            roots = load_pem_certificates(parsed.bundle_pem.encode(), what="bundle_pem")
            bundle = TrustBundle(self.trust_domain, tuple(roots), chain[1:])
            leaf = chain[0]
            spiffe_id = spiffe_id_of(leaf)
            # Certificates are parsed lazily: a key of an unknown type fails only here.
            leaf_key = leaf.public_key()
        except (ValidationError, BundleError, SvidError, ValueError, UnsupportedAlgorithm) as exc:
            raise bad(str(exc)) from exc
        if leaf_key != key.public_key():
            raise bad("the leaf does not hold the public key we sent")
        if expected is not None and spiffe_id != expected:
            raise bad(f"issued for {spiffe_id}, expected {expected}")
        if not spiffe_id.member_of(self.trust_domain) or spiffe_id == self.ca_id:
            raise bad(f"{spiffe_id} is not a workload ID of {self.trust_domain}")
        if str(spiffe_id) != parsed.spiffe_id or format(leaf.serial_number, "x") != parsed.serial:
            raise bad("the response fields do not match the certificate")
        try:
            verify_svid(leaf, chain[1:], BundleSet.of(bundle), self.clock.now())
        except SvidError as exc:
            raise bad(str(exc)) from exc
        return IssuedSvid(spiffe_id, chain, bundle, leaf.not_valid_after_utc, leaf.serial_number)

    # Transport

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        context: ssl.SSLContext | None = None,
        identity: bytes = b"",
        timeout_seconds: float | None = None,
    ) -> _Reply:
        """Send to each address in turn until one answers 200 or 4xx."""
        failure: CaUnavailable | None = None
        for index in range(len(self._targets)):
            try:
                reply = await self._request_at(
                    index, method, path, body, context, identity, timeout_seconds
                )
            except CaUnavailable as exc:
                failure = exc
                continue
            if reply.status == 200 or _refusal(reply.status):
                return reply
            try:
                self._check_ok(reply)
            except CaUnavailable as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def _request_at(
        self,
        index: int,
        method: str,
        path: str,
        body: bytes | None,
        context: ssl.SSLContext | None,
        identity: bytes,
        timeout_seconds: float | None = None,
    ) -> _Reply:
        address = self.addresses[index]
        pool = self._idle.setdefault((index, identity), [])
        timeout = timeout_seconds or self.timeout_seconds
        while True:
            reused = bool(pool)
            try:
                with trio.fail_after(timeout):
                    conn = pool.pop() if reused else await self._connect(index, context)
                    try:
                        reply = await self._exchange(conn, address, method, path, body)
                    except BaseException:
                        await trio.aclose_forcefully(conn.stream)
                        raise
            except StaleConnectionError as exc:
                if reused:
                    continue  # the server closed an idle connection: try a fresh one
                raise CaUnavailable(
                    None, "unreachable", f"{address}: closed without answer"
                ) from exc
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if reused:
                    continue
                raise CaUnavailable(None, "unreachable", f"{address}: {_describe(exc)}") from exc
            except h11.ProtocolError as exc:
                raise CaUnavailable(None, "bad_http", f"{address}: {exc}") from exc
            except trio.TooSlowError as exc:
                raise CaUnavailable(
                    None, "timeout", f"{address}: no answer within {timeout} s"
                ) from exc
            if conn.http.our_state is h11.DONE and conn.http.their_state is h11.DONE:
                conn.http.start_next_cycle()
                if len(pool) < _MAX_IDLE_PER_POOL:
                    pool.append(conn)
                else:
                    await trio.aclose_forcefully(conn.stream)
            else:
                await trio.aclose_forcefully(conn.stream)
            return reply

    async def _connect(self, index: int, context: ssl.SSLContext | None) -> _Connection:
        host, port = self._targets[index]
        address = self.addresses[index]
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, context or self._anonymous)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ or exc
            raise CaUnavailable(None, "tls_failed", f"{address}: TLS handshake: {cause}") from exc
        try:
            server_id = self._server_id(stream)
        except (SvidError, ValueError) as exc:
            await trio.aclose_forcefully(stream)
            raise CaUnavailable(None, "ca_identity", f"{address}: {exc}") from exc
        if server_id != self.ca_id:
            await trio.aclose_forcefully(stream)
            raise CaUnavailable(
                None,
                "ca_identity",
                f"{address} presented {server_id}, not the CA {self.ca_id}",
            )
        return _Connection(stream, h11.Connection(h11.CLIENT))

    def _server_id(self, stream: trio.SSLStream[trio.SocketStream]) -> SpiffeId:
        """The CA server's SPIFFE ID after the handshake. Fails closed.

        With the intermediate known (in the bundle) this is `peer_svid`'s full check. Without
        it (Python 3.11 does not expose the peer's chain), or when the CA signs with an
        intermediate rotated in after this client's bundle, OpenSSL has verified the chain
        strictly against this trust domain's roots only, and the leaf is re-checked here
        against the SVID profile and validity window.
        """
        now = self.clock.now()
        if self._ca_bundles[self.trust_domain].intermediates:
            try:
                return peer_svid(stream, self._ca_bundles, now).spiffe_id
            except SvidError as exc:
                # Signed by an intermediate this client's bundle does not know yet (the CA
                # rotated it since): OpenSSL has verified the chain the server sent to this
                # trust domain's roots, so the check below is the one made without any.
                if exc.reason is not SvidFailure.UNTRUSTED:
                    raise
        der = stream.getpeercert(binary_form=True)
        if not der:
            raise SvidError(SvidFailure.MALFORMED, "the CA server presented no certificate")
        leaf = x509.load_der_x509_certificate(der)
        spiffe_id = check_leaf_profile(leaf)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise SvidError(SvidFailure.EXPIRED, f"{spiffe_id} is outside its validity at {now}")
        return spiffe_id

    async def _exchange(
        self, conn: _Connection, address: str, method: str, path: str, body: bytes | None
    ) -> _Reply:
        headers = [("host", address), ("accept", "application/json")]
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        data = conn.http.send(h11.Request(method=method, target=path, headers=headers)) or b""
        if body:
            data += conn.http.send(h11.Data(data=body)) or b""
        data += conn.http.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(data)
        status: int | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.http.next_event()
            if event is h11.NEED_DATA:
                received = await conn.stream.receive_some(65536)
                if not received and status is None:
                    raise StaleConnectionError
                conn.http.receive_data(bytes(received))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_RESPONSE_BYTES:
                    raise CaUnavailable(status, "bad_response", f"{address}: response too large")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return _Reply(status, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                if status is None:
                    raise StaleConnectionError
                raise trio.BrokenResourceError("the CA closed the connection mid-response")


def _csr_pem(key: PrivateKey) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode("ascii")
