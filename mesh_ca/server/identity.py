"""The CA server's own certificate: an SVID for ``spiffe://TD/mesh/ca``, and its TLS context.

The server issues it to itself at start from the intermediate, records it in the ledger
(kind ``ca-server``) and issues a fresh one at half its lifetime. Clients authenticate
the CA by this SPIFFE ID, never by hostname. The context *requests* a client
certificate but does not require one: bootstrap has none yet; the endpoints that need
one (renew, admin) check it per request (`CaService`), and fail closed without it.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.issuance import issue_leaf, make_csr
from mesh_ca.server.core import CaAuthority, ca_server_id
from mesh_ca.store import IssuedRecord, StateStore
from meshgate.identity import BundleSet
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import mesh_context

__all__ = ["ServerIdentity", "issue_server_identity", "server_context"]

SERVER_CERT_TTL = timedelta(hours=1)


@final
@dataclass(frozen=True)
class ServerIdentity:
    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate
    context: ssl.SSLContext

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def renew_at(self) -> datetime:
        """Half-way through the lifetime, like every SVID in the mesh."""
        start = self.leaf.not_valid_before_utc
        return start + (self.not_after - start) / 2


def server_context(chain_pem: bytes, key_pem: bytes, bundles: BundleSet) -> ssl.SSLContext:
    """A TLS 1.3 server context like `mesh_context`, but the client certificate is optional.

    OpenSSL still verifies a certificate that is sent (and aborts the handshake if it does
    not chain to `bundles`); whether one is *needed* is decided per endpoint.
    """
    context = mesh_context("server", chain_pem, key_pem, bundles)
    context.verify_mode = ssl.CERT_OPTIONAL  # before first use: the context is not shared yet
    return context


def issue_server_identity(
    authority: CaAuthority, store: StateStore, now: datetime, ttl: timedelta = SERVER_CERT_TTL
) -> ServerIdentity:
    """Issue, record and load a fresh server SVID. Blocking (store write): run in a thread."""
    key = generate_key()
    serial = secrets.randbits(127) | (1 << 126)
    spiffe_id = ca_server_id(authority.trust_domain)
    leaf = issue_leaf(make_csr(key), spiffe_id, authority.signer, now, ttl, serial=serial)
    store.record_issued(
        IssuedRecord(
            serial, spiffe_id, "ca-server", now, leaf.not_valid_after_utc, authority.replica
        )
    )
    chain_pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM)
        for c in (leaf, authority.signer.cert, *authority.signer.chain)
    )
    key_pem = private_key_pem(key)
    context = server_context(chain_pem, key_pem, authority.bundles)
    return ServerIdentity(chain_pem, key_pem, leaf, context)
