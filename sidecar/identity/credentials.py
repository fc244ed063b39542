"""The sidecar's current credentials: SVID, key, trust bundles, revocations, TLS contexts.

Validate, then publish: a `Credentials` value is built (and its TLS contexts created) before
it replaces the old one, so a bad certificate or bundle never goes live and the old one keeps
serving. Readers take `store.current` once per handshake; open connections keep the context
they were made with. Pure apart from building `ssl.SSLContext` objects: no trio, no sockets.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshgate.errors import IdentityError
from meshgate.identity import (
    BundleSet,
    SpiffeId,
    SvidError,
    TrustBundle,
    TrustDomain,
    check_leaf_profile,
)
from meshgate.identity.bundle import pem_bundle
from meshgate.keys import PrivateKey, private_key_pem
from meshgate.transport.mtls import mesh_context

__all__ = ["CredentialError", "CredentialStore", "Credentials", "Revocations"]

_SHA256 = hashes.SHA256()


class CredentialError(IdentityError, ValueError):
    """New credentials were refused; the previous ones stay in use."""


def _spki(public: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@final
@dataclass(frozen=True)
class Revocations:
    spiffe_ids: frozenset[SpiffeId] = frozenset()
    serials: frozenset[int] = frozenset()
    # Trust domains whose SPIFFE bundle has no X.509 authority: every SVID of theirs is
    # refused (SPIFFE X509-SVID spec 6.2), and open connections with them are cut.
    untrusted_domains: frozenset[TrustDomain] = frozenset()

    def refuses(self, spiffe_id: SpiffeId, serial: int) -> bool:
        return (
            spiffe_id in self.spiffe_ids
            or serial in self.serials
            or (bool(self.untrusted_domains) and spiffe_id.trust_domain in self.untrusted_domains)
        )


@final
@dataclass(frozen=True)
class Credentials:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates
    key: PrivateKey
    bundles: BundleSet
    server_context: ssl.SSLContext = field(repr=False)
    client_context: ssl.SSLContext = field(repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    @classmethod
    def build(
        cls,
        chain: tuple[x509.Certificate, ...],
        key: PrivateKey,
        bundles: BundleSet,
        now: datetime,
        *,
        expected_id: SpiffeId | None = None,
    ) -> Credentials:
        """Check the SVID against its own bundle and build both TLS contexts; fails closed."""
        from meshgate.identity import verify_svid

        if not chain:
            raise CredentialError("empty certificate chain")
        try:
            check_leaf_profile(chain[0])
            verified = verify_svid(chain[0], chain[1:], bundles, now)
        except SvidError as exc:
            raise CredentialError(f"own SVID refused: {exc}") from exc
        if expected_id is not None and verified.spiffe_id != expected_id:
            raise CredentialError(
                f"own SVID is for {verified.spiffe_id}, but this sidecar is {expected_id}"
            )
        if _spki(chain[0].public_key()) != _spki(key.public_key()):
            raise CredentialError("private key does not match the SVID's public key")
        bundles = _learn_intermediates(bundles, chain)
        chain_pem, key_pem = pem_bundle(chain), private_key_pem(key)
        try:
            server = mesh_context("server", chain_pem, key_pem, bundles)
            client = mesh_context("client", chain_pem, key_pem, bundles)
        except ssl.SSLError as exc:
            raise CredentialError(f"TLS context refused the credentials: {exc}") from exc
        return cls(verified.spiffe_id, chain, key, bundles, server, client)


def _learn_intermediates(bundles: BundleSet, chain: tuple[x509.Certificate, ...]) -> BundleSet:
    """Add our own verified intermediates to our trust domain's bundle.

    After a handshake Python < 3.13 exposes only the peer's leaf, so `peer_svid` can build a
    path only through intermediates the bundle knows. A bundle fetched from the CA or read
    from disk holds roots only; the intermediates that signed our own SVID (just verified
    against those roots) are the ones that sign our peers' SVIDs too.
    """
    if len(chain) < 2:
        return bundles
    from meshgate.identity import spiffe_id_of

    domain = spiffe_id_of(chain[0]).trust_domain
    bundle = bundles[domain]
    known = {cert.fingerprint(_SHA256) for cert in bundle.intermediates}
    new = tuple(c for c in chain[1:] if c.fingerprint(_SHA256) not in known)
    if not new:
        return bundles
    return bundles.with_bundle(
        TrustBundle(
            domain,
            bundle.roots,
            (*bundle.intermediates, *new),
            bundle.sequence,
            bundle.refresh_hint_seconds,
        )
    )


@final
class CredentialStore:
    """Holds the current credentials and revocations; notifies listeners on change."""

    def __init__(self) -> None:
        self._current: Credentials | None = None
        self._revocations = Revocations()
        self._listeners: list[Callable[[], None]] = []

    @property
    def current(self) -> Credentials | None:
        return self._current

    @property
    def revocations(self) -> Revocations:
        return self._revocations

    def usable(self, now: datetime) -> Credentials | None:
        """The current credentials if not expired: expired means no mTLS either way."""
        creds = self._current
        return creds if creds is not None and not creds.expired(now) else None

    def publish(self, credentials: Credentials) -> None:
        self._current = credentials
        self._notify()

    def publish_revocations(self, revocations: Revocations) -> None:
        self._revocations = revocations
        self._notify()

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
