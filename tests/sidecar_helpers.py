"""Shared helpers for sidecar component tests: credential stores from the test PKI."""

from __future__ import annotations

from datetime import datetime

from meshgate.identity import BundleSet, TrustBundle
from sidecar.identity.credentials import Credentials, CredentialStore
from tests.pki import Leaf
from tests.pki import TestPki as Pki


def bundle_with_intermediates(*pkis: Pki) -> BundleSet:
    """Roots plus the signing intermediates: Python 3.11 exposes only the peer's leaf."""
    return BundleSet.of(*(TrustBundle(p.trust_domain, (p.root,), (p.intermediate,)) for p in pkis))


def store_for(leaf: Leaf, bundles: BundleSet, now: datetime) -> CredentialStore:
    store = CredentialStore()
    store.publish(Credentials.build((leaf.cert, *leaf.chain), leaf.key, bundles, now))
    return store
