"""TLS contexts for mesh hops, and the post-handshake SVID check. Shared by CA and sidecar.

Every context is built fresh from a credential and a bundle set, and never mutated after
use: rotation means a new context (mutating trust on a live context races handshakes).
Mesh hops are TLS 1.3 only, certificates required both ways, no tickets or resumption
(resumption skips certificate checks), no renegotiation. Hostnames are not checked: peers
are identified by SPIFFE ID after the handshake, with `peer_svid`.

Private keys are loaded through an anonymous memory file (memfd) so they never touch disk.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Literal, Protocol

from cryptography import x509

from meshgate.identity import BundleSet, SvidError, SvidFailure, VerifiedSvid, verify_svid

__all__ = [
    "PeerCertSource",
    "client_context",
    "load_identity",
    "mesh_context",
    "peer_svid",
    "presented_intermediates",
]

Role = Literal["server", "client"]


class PeerCertSource(Protocol):
    """What `peer_svid` needs: `ssl.SSLObject`, `ssl.SSLSocket` and `trio.SSLStream` all fit."""

    def getpeercert(self, binary_form: bool = ...) -> object: ...


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshgate-credential", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Portable fallback: a private 0600 file, removed as soon as OpenSSL has read it.
    fd, name = tempfile.mkstemp(prefix=".meshgate-", suffix=".pem")
    try:
        os.write(fd, data)
        os.close(fd)
        yield name
    finally:
        os.unlink(name)


def load_identity(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and its private key into `context` without writing the key."""
    with _memory_file(chain_pem) as cert_path, _memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # identity is the SPIFFE ID, checked by peer_svid
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        context.num_tickets = 0


def mesh_context(
    role: Role, chain_pem: bytes, key_pem: bytes, bundles: BundleSet
) -> ssl.SSLContext:
    """A fresh TLS 1.3 mutual-TLS context presenting `chain_pem`, trusting `bundles` roots."""
    context = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if role == "server" else ssl.PROTOCOL_TLS_CLIENT
    )
    _harden(context)
    context.load_verify_locations(cadata=bundles.all_roots_pem().decode("ascii"))
    load_identity(context, chain_pem, key_pem)
    return context


def client_context(
    bundles: BundleSet, chain_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server against `bundles`; presents a cert if given.

    Used by the CA client: bootstrap has no certificate yet, renewal presents the current one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.load_verify_locations(cadata=bundles.all_roots_pem().decode("ascii"))
    if chain_pem is not None and key_pem is not None:
        load_identity(context, chain_pem, key_pem)
    return context


def peer_svid(tls: PeerCertSource, bundles: BundleSet, now: datetime) -> VerifiedSvid:
    """Re-check the peer's leaf after OpenSSL's handshake: SVID profile, ID, own-domain chain.

    Fails closed: a missing or unreadable certificate is an `SvidError`. OpenSSL has already
    verified a chain to *some* trusted root; this adds the SVID profile rules OpenSSL does not
    know and binds the path to the bundle of the peer's own trust domain.
    """
    der = tls.getpeercert(binary_form=True)
    if not isinstance(der, bytes) or not der:
        raise SvidError(SvidFailure.MALFORMED, "peer presented no certificate")
    try:
        leaf = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise SvidError(SvidFailure.MALFORMED, f"peer certificate is not DER X.509: {exc}") from exc
    return verify_svid(leaf, presented_intermediates(tls, der), bundles, now)


def presented_intermediates(tls: object, leaf_der: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates the peer sent after its leaf, when the TLS object exposes them
    (`peer_chain_der`). A federated trust domain's intermediates are known only from
    there: its bundle holds roots. They are untrusted input: path validation against the
    peer's own trust-domain bundle decides. An unreadable one is left out."""
    chain_of = getattr(tls, "peer_chain_der", None)
    if chain_of is None:
        return ()
    found: list[x509.Certificate] = []
    for der in chain_of()[:4]:  # max_chain_depth of verify_svid: more cannot help
        if der == leaf_der:
            continue
        try:
            found.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion):
            continue
    return tuple(found)
