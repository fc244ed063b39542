"""SPIFFE JSON trust bundles: round trip, and every malformed document refused with a
`BundleError` that names what is wrong (never another exception)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from mesh_ca.issuance import make_intermediate
from meshgate.identity import TrustDomain
from meshgate.identity.bundle import (
    BundleError,
    TrustBundle,
    bundle_sequence,
    check_bundle_update,
)
from meshgate.keys import generate_key
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
        ('{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": 3}]}', "x5c must be a list"),
        (
            '{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["bm90IGEgY2VydA=="]}]}',
            "x5c[0] is not a base64 DER certificate",
        ),
        ('{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["!!"]}]}', "not a base64"),
        ('{"keys": [], "spiffe_sequence": "1"}', "spiffe_sequence must be a non-negative"),
        ('{"keys": [], "spiffe_sequence": true}', "spiffe_sequence must be a non-negative"),
        ('{"keys": [], "spiffe_sequence": -1}', "spiffe_sequence must be a non-negative"),
        ('{"keys": [], "spiffe_refresh_hint": 1.5}', "spiffe_refresh_hint must be"),
        ('{"keys": [3]}', "keys[0] is not a JSON object"),
        ('{"keys": [], "keys": []}', "duplicate JSON member 'keys'"),
        ('{"keys": [{"use": "jwt-svid", "use": "x509-svid"}]}', "duplicate JSON member 'use'"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ],
)
def test_malformed_bundles_are_refused_with_a_reason(document: str, says: str) -> None:
    with pytest.raises(BundleError, match=re.escape(says)) as info:
        TrustBundle.from_spiffe_json(TD, document)
    assert "SPIFFE bundle for example.org" in str(info.value)


def _doc(bundle: TrustBundle, **changes: object) -> dict[str, object]:
    return {**bundle.to_spiffe_json(), **changes}


def test_entries_the_spec_says_to_ignore_are_ignored_and_x5c_uses_its_first_value() -> None:
    pki, other = Pki(), Pki()
    document = _doc(pki.bundle)
    entry = document["keys"][0]  # type: ignore[index]
    extra = other.bundle.to_spiffe_json()["keys"][0]["x5c"][0]
    document["keys"] = [
        {**entry, "x5c": [*entry["x5c"], extra]},  # first counts, the rest ignored
        {**entry, "use": "jwt-svid", "x5c": [extra]},  # unknown use
        {**entry, "kty": "XYZ", "x5c": [extra]},  # unknown key type
        {"use": "x509-svid", "x5c": [extra]},  # no kty
        {**entry, "x5c": []},  # no certificate
        {k: v for k, v in entry.items() if k != "x5c"},
    ]
    bundle = TrustBundle.from_spiffe_json(TD, json.dumps(document))
    assert bundle.roots == pki.bundle.roots


def test_an_empty_key_set_is_an_untrusted_domain_not_an_error() -> None:
    for keys in ([], [{"use": "jwt-svid", "kty": "EC"}]):
        bundle = TrustBundle.from_spiffe_json(TD, json.dumps({"keys": keys}))
        assert bundle.untrusted
        assert bundle.roots == ()
    assert not Pki().bundle.untrusted
    with pytest.raises(BundleError, match="no root"):
        TrustBundle(TD, ())


def test_the_sequence_must_increase_when_the_roots_change() -> None:
    pki, other = Pki(), Pki()
    first = TrustBundle(TD, pki.bundle.roots, sequence=5)
    assert not check_bundle_update(first, TrustBundle(TD, pki.bundle.roots, sequence=5))
    assert check_bundle_update(first, TrustBundle(TD, other.bundle.roots, sequence=6))
    # A newer sequence over the same roots changes no trust (the caller records it).
    assert not check_bundle_update(first, TrustBundle(TD, pki.bundle.roots, sequence=6))
    with pytest.raises(BundleError, match="went back from 5 to 4"):
        check_bundle_update(first, TrustBundle(TD, pki.bundle.roots, sequence=4))
    with pytest.raises(BundleError, match="stayed at 5"):
        check_bundle_update(first, TrustBundle(TD, other.bundle.roots, sequence=5))
    # Without a sequence on one side, only the roots decide.
    unknown = TrustBundle(TD, pki.bundle.roots)
    assert check_bundle_update(unknown, TrustBundle(TD, other.bundle.roots))
    assert not check_bundle_update(unknown, TrustBundle(TD, pki.bundle.roots))
    assert check_bundle_update(None, first)


def test_the_ca_publishes_a_sequence_that_grows_with_each_rotation_step() -> None:
    old, new = Pki(now=datetime(2030, 1, 1, tzinfo=UTC)), Pki(now=datetime(2031, 1, 1, tzinfo=UTC))
    only_old = bundle_sequence(old.bundle.roots)
    both = bundle_sequence((*old.bundle.roots, *new.bundle.roots))
    only_new = bundle_sequence(new.bundle.roots)
    assert only_old < both < only_new
    published = TrustBundle(TD, old.bundle.roots, sequence=only_old).to_spiffe_json()
    assert published["spiffe_sequence"] == only_old


# Published intermediates (meshgate_intermediates)


def _with_intermediates(pki: Pki) -> TrustBundle:
    return TrustBundle(pki.bundle.trust_domain, pki.bundle.roots, (pki.intermediate,), 7)


def test_published_intermediates_survive_the_json_and_are_not_trust_anchors() -> None:
    bundle = _with_intermediates(Pki())
    document = bundle.to_spiffe_json()
    assert len(document["keys"]) == 1  # roots only: other SPIFFE implementations see those
    again = TrustBundle.from_spiffe_json(TD, json.dumps(document))
    assert again.intermediates == bundle.intermediates
    assert again.roots == bundle.roots


def test_an_intermediate_no_root_of_the_document_signed_is_refused() -> None:
    ours, theirs = Pki(), Pki()
    document = _doc(_with_intermediates(ours))
    document["meshgate_intermediates"] = _with_intermediates(theirs).to_spiffe_json()[
        "meshgate_intermediates"
    ]
    with pytest.raises(BundleError, match=r"meshgate_intermediates\[0\] is not signed by any root"):
        TrustBundle.from_spiffe_json(TD, json.dumps(document))


@pytest.mark.parametrize(
    ("value", "says"),
    [(3, "must be a list of base64 strings"), (["!!"], "not a base64 DER certificate")],
)
def test_malformed_published_intermediates_are_refused(value: object, says: str) -> None:
    document = _doc(Pki().bundle, meshgate_intermediates=value)
    with pytest.raises(BundleError, match=re.escape(says)):
        TrustBundle.from_spiffe_json(TD, json.dumps(document))


def test_a_newly_published_intermediate_is_a_change_of_trust() -> None:
    pki = Pki()
    known = TrustBundle(TD, pki.bundle.roots, (pki.intermediate,), 7)
    # Same roots, one more intermediate (signed by the same root) at a higher sequence.
    extra = make_intermediate(TD, generate_key(), pki.root, pki.root_key, datetime.now(UTC))
    assert check_bundle_update(known, TrustBundle(TD, known.roots, (pki.intermediate, extra), 8))
    # A document without intermediates (an older CA) keeps the known ones: no change.
    assert not check_bundle_update(known, TrustBundle(TD, known.roots, (), 8))
    assert not check_bundle_update(known, TrustBundle(TD, known.roots, (pki.intermediate,), 8))
