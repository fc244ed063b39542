"""SPIFFE federation, pure: bundle endpoint URLs, the federated-bundles document, merging.

A mesh federates with a foreign trust domain by holding that domain's bundle, kept apart
from its own (SPIFFE Federation 4.2: bundles of different trust domains are never merged;
`meshgate.identity.svid.verify_svid` validates a peer against its own domain's bundle only).
The CA fetches foreign bundles and hands them to its sidecars in one document,
``{"trust_domains": {"b.example": <SPIFFE bundle>, ...}}``, whose keys name the trust
domain of each bundle (the bundle itself does not: Federation 5.1). Reading it is strict:
a bundle for the reader's own trust domain, a key that is not a trust domain or a
duplicate key refuses the whole document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes

from meshgate.errors import IdentityError
from meshgate.identity.bundle import BundleError, BundleSet, TrustBundle
from meshgate.identity.spiffe_id import SpiffeIdError, TrustDomain

__all__ = [
    "DEFAULT_REFRESH_SECONDS",
    "EndpointUrl",
    "FederationError",
    "federated_bundles_document",
    "merge_federated",
    "parse_endpoint_url",
    "parse_federated_bundles",
    "refresh_delay_seconds",
    "trust_fingerprint",
]

# Federation 4.1: without a spiffe_refresh_hint, "five minutes is recommended".
DEFAULT_REFRESH_SECONDS: Final = 300
_MIN_REFRESH_SECONDS: Final = 1
_MAX_REFRESH_SECONDS: Final = 24 * 3600


class FederationError(IdentityError, ValueError):
    """A federation parameter or document is unusable; the message says what and where."""


@final
@dataclass(frozen=True, slots=True)
class EndpointUrl:
    """A bundle endpoint URL, as `parse_endpoint_url` accepts it."""

    url: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint_url(url: str) -> EndpointUrl:
    """An ``https`` URL without userinfo or fragment (Federation 5.2.2.1), port 443 unless
    given. Raises `FederationError` naming the problem."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FederationError(f"{url!r} is not a URL ({exc})") from exc
    if parts.scheme != "https":
        raise FederationError(f"{url!r}: a bundle endpoint URL must start with https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FederationError(f"{url!r}: a bundle endpoint URL must not hold userinfo")
    if not parts.hostname:
        raise FederationError(f"{url!r}: no host")
    if parts.fragment:
        raise FederationError(f"{url!r}: a bundle endpoint URL has no #fragment")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise FederationError(f"{url!r}: spaces or control characters")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return EndpointUrl(url, parts.hostname, port or 443, target)


def refresh_delay_seconds(bundle: TrustBundle | None, override: int | None = None) -> int:
    """Seconds until the next fetch: `override` if set, else the bundle's
    ``spiffe_refresh_hint`` (Federation 4.1), bounded to 1 s .. 24 h."""
    seconds = override if override is not None else None
    if seconds is None:
        seconds = bundle.refresh_hint_seconds if bundle is not None else DEFAULT_REFRESH_SECONDS
    return max(_MIN_REFRESH_SECONDS, min(_MAX_REFRESH_SECONDS, seconds))


def federated_bundles_document(bundles: Iterable[TrustBundle]) -> dict[str, Any]:
    """The document a CA serves its sidecars: each foreign bundle under its trust domain."""
    return {
        "trust_domains": {
            bundle.trust_domain.name: bundle.to_spiffe_json()
            for bundle in sorted(bundles, key=lambda b: b.trust_domain.name)
        }
    }


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise FederationError(f"duplicate JSON member {name[:64]!r}")
        result[name] = value
    return result


def parse_federated_bundles(document: str | bytes, local: TrustDomain) -> BundleSet:
    """The foreign bundles of a federated-bundles document. Fails closed: anything wrong
    raises `FederationError` and nothing of the document is used."""
    try:
        data = json.loads(document, object_pairs_hook=_unique)
    except FederationError as exc:
        raise FederationError(f"federated bundles: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FederationError(f"federated bundles: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("trust_domains"), dict):
        raise FederationError("federated bundles: no 'trust_domains' object")
    found: list[TrustBundle] = []
    for name, bundle_doc in data["trust_domains"].items():
        try:
            domain = TrustDomain.parse(name)
        except SpiffeIdError as exc:
            raise FederationError(f"federated bundles: {name[:64]!r}: {exc}") from None
        if domain == local:
            raise FederationError(
                f"federated bundles: a bundle for {local}, this mesh's own trust domain "
                "(its bundle comes only from its own CA)"
            )
        try:
            found.append(TrustBundle.from_spiffe_json(domain, json.dumps(bundle_doc)))
        except BundleError as exc:
            raise FederationError(f"federated bundles: {exc}") from exc
    return BundleSet.of(*found)


def merge_federated(current: BundleSet, local: TrustDomain, federated: BundleSet) -> BundleSet:
    """`current`'s bundle for `local` plus exactly the `federated` ones: a trust domain no
    longer federated is dropped, and the local bundle is never taken from `federated`."""
    merged: dict[TrustDomain, TrustBundle] = {
        domain: bundle for domain, bundle in federated.items() if domain != local
    }
    own = current.get(local)
    if own is not None:
        merged[local] = own
    return BundleSet(merged)


def trust_fingerprint(bundles: Mapping[TrustDomain, TrustBundle]) -> frozenset[tuple[str, bytes]]:
    """What trust `bundles` grant: (trust domain, root fingerprint) pairs. Two sets with the
    same fingerprint verify the same SVIDs (sequence and refresh hint aside)."""
    sha256 = hashes.SHA256()
    pairs = {
        (domain.name, root.fingerprint(sha256))
        for domain, bundle in bundles.items()
        for root in bundle.roots
    }
    # A domain present with no authority (untrusted) is still a difference from absent.
    pairs |= {(domain.name, b"") for domain, bundle in bundles.items() if not bundle.roots}
    return frozenset(pairs)
