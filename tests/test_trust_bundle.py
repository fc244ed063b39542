"""SPIFFE JSON trust bundles: round trip, and every malformed document refused with a
`BundleError` that names what is wrong (never another exception)."""

from __future__ import annotations

import json
import re

import pytest

from mesh_ca.identity import TrustDomain
from mesh_ca.identity.bundle import BundleError, TrustBundle
from tests.pki import TestPki as Pki

TD = TrustDomain.parse("example.org")


def test_a_bundle_survives_its_own_json() -> None:
    bundle = Pki().bundle
    again = TrustBundle.from_spiffe_json(bundle.trust_domain, json.dumps(bundle.to_spiffe_json()))
    assert again.roots == bundle.roots


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("not json", "not JSON"),
        ("[]", "no 'keys' list"),
        ('{"keys": 3}', "no 'keys' list"),
        ('{"keys": [{"use": "x509-svid", "x5c": []}]}', "keys[0].x5c must hold exactly one"),
        ('{"keys": [{"use": "x509-svid", "x5c": ["bm90IGEgY2VydA=="]}]}', "not a certificate"),
        ('{"keys": [], "spiffe_sequence": "1"}', "must be integers"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ],
)
def test_malformed_bundles_are_refused_with_a_reason(document: str, says: str) -> None:
    with pytest.raises(BundleError, match=re.escape(says)) as info:
        TrustBundle.from_spiffe_json(TD, document)
    assert "SPIFFE bundle for example.org" in str(info.value)
