"""Verified peer leaves are remembered per bundle set and re-checked against the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from meshgate.identity import SvidError, SvidFailure
from sidecar.transport.svid_cache import VerifiedLeafCache
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates

NOW = datetime.now(UTC)


class Presented:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> object:
        return self.der


def _presented(pki: Pki, ttl: timedelta = timedelta(hours=1)) -> Presented:
    leaf = pki.leaf(pki.spiffe_id("shop", "orders"), ttl=ttl)
    return Presented(leaf.cert.public_bytes(serialization.Encoding.DER))


def test_same_leaf_and_bundles_is_verified_once() -> None:
    pki = Pki(now=NOW)
    bundles = bundle_with_intermediates(pki)
    cache, peer = VerifiedLeafCache(), _presented(pki)
    first = cache.verify(peer, bundles, NOW)
    second = cache.verify(peer, bundles, NOW + timedelta(minutes=1))
    assert second is first
    assert (cache.misses, cache.hits) == (1, 1)


def test_new_bundle_set_misses() -> None:
    pki = Pki(now=NOW)
    cache, peer = VerifiedLeafCache(), _presented(pki)
    cache.verify(peer, bundle_with_intermediates(pki), NOW)
    cache.verify(peer, bundle_with_intermediates(pki), NOW)
    assert cache.misses == 2


def test_expired_leaf_is_refused_even_after_a_hit() -> None:
    pki = Pki(now=NOW)
    bundles = bundle_with_intermediates(pki)
    cache, peer = VerifiedLeafCache(), _presented(pki, ttl=timedelta(minutes=5))
    cache.verify(peer, bundles, NOW)
    with pytest.raises(SvidError) as caught:
        cache.verify(peer, bundles, NOW + timedelta(minutes=10))
    assert caught.value.reason is SvidFailure.EXPIRED


def test_leaf_of_another_ca_is_refused_and_not_remembered() -> None:
    pki, other = Pki(now=NOW), Pki(now=NOW)
    cache, stranger = VerifiedLeafCache(), _presented(other)
    for _ in range(2):
        with pytest.raises(SvidError):
            cache.verify(stranger, bundle_with_intermediates(pki), NOW)
    assert cache.hits == 0


def test_cache_is_bounded() -> None:
    pki = Pki(now=NOW)
    bundles = bundle_with_intermediates(pki)
    cache = VerifiedLeafCache(max_entries=2)
    peers = [_presented(pki) for _ in range(3)]
    for peer in peers:
        cache.verify(peer, bundles, NOW)
    cache.verify(peers[0], bundles, NOW)  # evicted by the third
    assert (cache.misses, cache.hits) == (4, 0)


def test_expired_leaves_are_swept_instead_of_kept_until_the_cap() -> None:
    """Every rotation brings a new peer leaf; the expired ones (and the old bundle sets they
    pin) used to stay until 256 were held."""
    cache = VerifiedLeafCache()
    for i in range(100):
        now = NOW + timedelta(minutes=10 * i)
        pki = Pki(now=now)
        cache.verify(_presented(pki, ttl=timedelta(minutes=5)), bundle_with_intermediates(pki), now)
        assert len(cache._entries) <= 17  # the sweep floor, plus the leaf just verified
