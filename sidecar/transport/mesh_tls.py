"""Mesh handshakes: mTLS with the current credentials, then the checks OpenSSL cannot make.

Both directions take one snapshot of the credential store per connection, run the TLS 1.3
handshake under a timeout, re-check the peer's leaf against the SVID profile and the bundle
of its own trust domain (`meshgate.transport.mtls.peer_svid`), refuse revoked IDs and serials and,
when connecting, require one of the configured SPIFFE IDs (secure naming). Fails closed: without
usable (present, unexpired) own credentials no handshake is attempted either way, and there
is no plaintext fallback. Every refusal is a `MeshTlsError` with a stable `reason`.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import final

import trio

from meshgate.errors import TransportError
from meshgate.identity import SpiffeId, SvidError, SvidFailure, VerifiedSvid
from meshgate.transport.mtls import PeerCertSource
from meshgate.transport.tls_stream import TlsError, TlsStream
from sidecar.identity.credentials import Credentials, CredentialStore, Revocations
from sidecar.transport.svid_cache import VerifiedLeafCache

__all__ = [
    "HandshakeFailure",
    "MeshConnection",
    "MeshTlsError",
    "accept_mesh",
    "check_peer",
    "classify_ssl_error",
    "connect_mesh",
]


# Path validation of a peer leaf costs as much CPU as the handshake; verified leaves are
# remembered per bundle set (see sidecar.transport.svid_cache). Revocation is checked every time.
_VERIFIED_LEAVES = VerifiedLeafCache()


class HandshakeFailure(enum.StrEnum):
    """Why a mesh handshake was refused; stable strings for metrics labels."""

    NO_CREDENTIALS = "no_credentials"  # own SVID absent or expired: fail closed
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PEER_CLOSED = "peer_closed"
    PROTOCOL = "protocol"  # not TLS 1.3, no shared cipher, plaintext on a TLS port
    NO_CLIENT_CERT = "no_client_cert"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_CA = "unknown_ca"
    UNKNOWN_TRUST_DOMAIN = "unknown_trust_domain"
    BAD_SVID = "bad_svid"
    IDENTITY_MISMATCH = "identity_mismatch"
    REVOKED = "revoked"


class MeshTlsError(TransportError):
    def __init__(self, reason: HandshakeFailure, detail: str, peer: SpiffeId | None = None) -> None:
        super().__init__(f"mesh handshake refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
        self.peer = peer


@final
@dataclass(frozen=True, slots=True)
class MeshConnection:
    """A verified mTLS stream, the peer's SVID, and the credentials this side presented."""

    stream: TlsStream
    peer: VerifiedSvid
    credentials: Credentials

    @property
    def peer_id(self) -> SpiffeId:
        return self.peer.spiffe_id

    @property
    def peer_serial(self) -> int:
        return self.peer.leaf.serial_number

    @property
    def expires_at(self) -> datetime:
        """The earlier notAfter of the two SVIDs of the handshake: the end of the connection
        in ``strict`` mode, and where both sides stop putting requests on it in every mode
        (`sidecar.transport.lifetime`)."""
        return min(self.peer.not_after, self.credentials.not_after)


_VERIFY_CODES = {
    9: HandshakeFailure.NOT_YET_VALID,  # X509_V_ERR_CERT_NOT_YET_VALID
    10: HandshakeFailure.EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    2: HandshakeFailure.UNKNOWN_CA,  # UNABLE_TO_GET_ISSUER_CERT
    18: HandshakeFailure.UNKNOWN_CA,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: HandshakeFailure.UNKNOWN_CA,  # SELF_SIGNED_CERT_IN_CHAIN
    20: HandshakeFailure.UNKNOWN_CA,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: HandshakeFailure.UNKNOWN_CA,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_ALERTS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure.NO_CLIENT_CERT,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": HandshakeFailure.NO_CLIENT_CERT,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": HandshakeFailure.EXPIRED,
    "TLSV1_ALERT_UNKNOWN_CA": HandshakeFailure.UNKNOWN_CA,
    "SSLV3_ALERT_BAD_CERTIFICATE": HandshakeFailure.BAD_SVID,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": HandshakeFailure.BAD_SVID,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": HandshakeFailure.BAD_SVID,
    "UNEXPECTED_EOF_WHILE_READING": HandshakeFailure.PEER_CLOSED,
}
_SVID_FAILURES = {
    SvidFailure.EXPIRED: HandshakeFailure.EXPIRED,
    SvidFailure.NOT_YET_VALID: HandshakeFailure.NOT_YET_VALID,
    SvidFailure.UNTRUSTED: HandshakeFailure.UNKNOWN_CA,
    SvidFailure.UNKNOWN_TRUST_DOMAIN: HandshakeFailure.UNKNOWN_TRUST_DOMAIN,
}


def classify_ssl_error(exc: BaseException | None) -> HandshakeFailure:
    """Map an OpenSSL handshake error (verify code or alert) to a failure reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, HandshakeFailure.BAD_SVID)
    if isinstance(exc, ssl.SSLEOFError):
        return HandshakeFailure.PEER_CLOSED
    if isinstance(exc, ssl.SSLError):
        return _ALERTS.get(str(exc.reason), HandshakeFailure.PROTOCOL)
    return HandshakeFailure.PROTOCOL


def check_peer(
    tls: PeerCertSource,
    credentials: Credentials,
    revocations: Revocations,
    now: datetime,
    *,
    expected: frozenset[SpiffeId] | None = None,
) -> VerifiedSvid:
    """The checks after OpenSSL's handshake. Pure. Fails closed with a `MeshTlsError`.

    `expected` is the secure-naming set when connecting out; None when accepting (the
    authorizer decides who may connect in).
    """
    try:
        peer = _VERIFIED_LEAVES.verify(tls, credentials.bundles, now)
    except SvidError as exc:
        reason = _SVID_FAILURES.get(exc.reason, HandshakeFailure.BAD_SVID)
        if exc.reason is SvidFailure.MALFORMED and "no certificate" in exc.detail:
            reason = HandshakeFailure.NO_CLIENT_CERT
        raise MeshTlsError(reason, str(exc)) from exc
    if revocations.refuses(peer.spiffe_id, peer.leaf.serial_number):
        raise MeshTlsError(
            HandshakeFailure.REVOKED,
            f"{peer.spiffe_id} (serial {peer.leaf.serial_number:x}) is revoked",
            peer.spiffe_id,
        )
    if expected is not None and peer.spiffe_id not in expected:
        wanted = ", ".join(sorted(str(s) for s in expected))
        raise MeshTlsError(
            HandshakeFailure.IDENTITY_MISMATCH,
            f"upstream presented {peer.spiffe_id}, expected one of: {wanted}",
            peer.spiffe_id,
        )
    return peer


def _explain(reason: HandshakeFailure, detail: str, credentials: Credentials) -> str:
    """OpenSSL's words, plus which trust domains were trusted when it found no issuer for the
    peer's certificate: the
    peer's chain (and so its trust domain) is not exposed when its verification fails, and
    an unfederated trust domain looks exactly like an unknown CA."""
    if reason is not HandshakeFailure.UNKNOWN_CA:
        return detail
    held = ", ".join(sorted(td.name for td in credentials.bundles))
    return (
        f"{detail}; the peer's certificate chains to none of the trust domains this sidecar "
        f"trusts ({held}): it is from an unfederated trust domain or an unknown CA"
    )


async def _handshake(
    transport: trio.abc.Stream,
    store: CredentialStore,
    now: Callable[[], datetime],
    *,
    server_side: bool,
    expected: frozenset[SpiffeId] | None,
    timeout_seconds: float,
) -> MeshConnection:
    credentials = store.usable(now())
    if credentials is None:
        await trio.aclose_forcefully(transport)
        state = "expired" if store.current is not None else "not loaded yet"
        raise MeshTlsError(HandshakeFailure.NO_CREDENTIALS, f"own SVID is {state}")
    context = credentials.server_context if server_side else credentials.client_context
    stream = TlsStream(transport, context, server_side=server_side)
    try:
        with trio.move_on_after(timeout_seconds) as scope:
            try:
                await stream.do_handshake()
            except TlsError as exc:
                reason = classify_ssl_error(exc.__cause__)
                detail = str(exc)
                if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    detail = _explain(reason, detail, credentials)
                elif reason is HandshakeFailure.UNKNOWN_CA:
                    detail += "; the peer does not trust this sidecar's CA (not federated?)"
                raise MeshTlsError(reason, detail) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise MeshTlsError(HandshakeFailure.PEER_CLOSED, str(exc) or "reset") from exc
            peer = check_peer(stream, credentials, store.revocations, now(), expected=expected)
            return MeshConnection(stream, peer, credentials)
        assert scope.cancelled_caught
        raise MeshTlsError(
            HandshakeFailure.HANDSHAKE_TIMEOUT, f"no handshake within {timeout_seconds:g} s"
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def accept_mesh(
    transport: trio.abc.Stream,
    store: CredentialStore,
    now: Callable[[], datetime],
    *,
    timeout_seconds: float,
) -> MeshConnection:
    """Server side of a mesh hop: mTLS, then the SVID checks. Fails closed."""
    return await _handshake(
        transport, store, now, server_side=True, expected=None, timeout_seconds=timeout_seconds
    )


async def connect_mesh(
    transport: trio.abc.Stream,
    store: CredentialStore,
    now: Callable[[], datetime],
    *,
    expected: frozenset[SpiffeId],
    timeout_seconds: float,
) -> MeshConnection:
    """Client side of a mesh hop: mTLS, the SVID checks and secure naming. Fails closed."""
    if not expected:
        await trio.aclose_forcefully(transport)
        raise MeshTlsError(HandshakeFailure.IDENTITY_MISMATCH, "no expected SPIFFE ID")
    return await _handshake(
        transport,
        store,
        now,
        server_side=False,
        expected=expected,
        timeout_seconds=timeout_seconds,
    )
