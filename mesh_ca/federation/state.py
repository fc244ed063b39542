"""The CA's federation relationships and the latest bundle of each. Pure: `now` is passed in.

`FederationState.configure` takes the ``[federation]`` entries as they are now: a new
trust domain starts with its persisted latest bundle or its bundle file, a removed one is
dropped at once (Federation 6.3: terminating a relationship deletes the local copy), an
edited one keeps its latest bundle and is refreshed at once. `due` says which to fetch or
re-read, `accept` records a new bundle (refusing a spiffe_sequence rollback,
`check_bundle_update`), `failed` schedules the retry. `document` is what sidecars fetch:
only the trust domains configured now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, final

from mesh_ca.federation.config import FederatedDomainConfig
from meshgate.identity import BundleError, BundleSet, TrustBundle, TrustDomain, check_bundle_update
from meshgate.identity.federation import federated_bundles_document, refresh_delay_seconds

# Where a CA keeps each foreign trust domain's latest bundle, under its directory.
FEDERATION_DIR: Final = "federation"


def stored_bundle_path(ca_path: Path, trust_domain: str) -> Path:
    """The file holding `trust_domain`'s latest fetched bundle in the CA directory."""
    return ca_path / FEDERATION_DIR / f"{trust_domain}.json"


__all__ = ["FEDERATION_DIR", "FederationState", "Relationship", "stored_bundle_path"]

# After a failed fetch: retry at the next refresh (Federation 6.2), but no later than this,
# so a relationship whose endpoint was down when it was added does not wait 5 minutes.
_RETRY_CAP: Final = timedelta(seconds=30)


@final
@dataclass
class Relationship:
    config: FederatedDomainConfig
    bundle: TrustBundle | None = None
    next_at: datetime | None = None  # None: due now
    last_ok: datetime | None = None
    last_error: str | None = None
    source: str = ""  # where `bundle` came from: "endpoint", "file", "stored"
    failures: int = field(default=0)


@final
class FederationState:
    def __init__(self, local: TrustBundle) -> None:
        self.local = local
        self.relationships: dict[TrustDomain, Relationship] = {}

    def configure(
        self,
        entries: tuple[FederatedDomainConfig, ...],
        stored: dict[TrustDomain, TrustBundle] | None = None,
    ) -> tuple[list[TrustDomain], list[TrustDomain]]:
        """Match the relationships to `entries`; (added, removed) trust domains. `stored`:
        bundles persisted by an earlier run, the latest known for a trust domain added now."""
        wanted = {entry.domain: entry for entry in entries}
        removed = [td for td in self.relationships if td not in wanted]
        for td in removed:
            del self.relationships[td]
        added: list[TrustDomain] = []
        for td, entry in wanted.items():
            known = self.relationships.get(td)
            if known is not None and known.config == entry:
                continue
            relationship = Relationship(entry)  # due at once
            if known is not None:  # edited (another URL, file, interval): same trust so far
                relationship.bundle, relationship.source = known.bundle, known.source
            elif stored and td in stored:
                relationship.bundle, relationship.source = stored[td], "stored"
            self.relationships[td] = relationship
            if known is None:
                added.append(td)
        return added, removed

    def due(self, now: datetime) -> list[Relationship]:
        return [r for r in self.relationships.values() if r.next_at is None or r.next_at <= now]

    def endpoint_bundle(self, relationship: Relationship) -> TrustBundle | None:
        """The bundle that authenticates `relationship`'s endpoint: this CA's own for an
        endpoint in the local trust domain, the latest of a federated one otherwise (for a
        self-serving endpoint, its own latest bundle)."""
        endpoint_id = relationship.config.endpoint_id
        if endpoint_id is None:
            return None
        td = endpoint_id.trust_domain
        if td == self.local.trust_domain:
            return self.local
        other = self.relationships.get(td)
        return other.bundle if other is not None else None

    def accept(
        self, relationship: Relationship, bundle: TrustBundle, now: datetime, source: str
    ) -> bool:
        """Record a fetched or re-read bundle; True if its roots changed. Raises
        `BundleError` for a rollback (the known bundle stays)."""
        relationship.next_at = now + timedelta(seconds=self.delay(relationship, bundle))
        changed = check_bundle_update(relationship.bundle, bundle)
        relationship.bundle, relationship.source = bundle, source
        relationship.last_ok, relationship.last_error, relationship.failures = now, None, 0
        return changed

    def failed(self, relationship: Relationship, error: str, now: datetime) -> None:
        delay = timedelta(seconds=self.delay(relationship, relationship.bundle))
        relationship.next_at = now + min(delay, _RETRY_CAP)
        relationship.last_error = error
        relationship.failures += 1

    @staticmethod
    def delay(relationship: Relationship, bundle: TrustBundle | None) -> int:
        return refresh_delay_seconds(bundle, relationship.config.refresh_seconds)

    def bundles(self) -> BundleSet:
        return BundleSet.of(*(r.bundle for r in self.relationships.values() if r.bundle))

    def document(self) -> bytes:
        return json.dumps(federated_bundles_document(self.bundles().values())).encode()


def read_bundle(domain: TrustDomain, data: bytes, what: str) -> TrustBundle:
    """A bundle file's contents: SPIFFE JSON when it starts with ``{``, else PEM roots."""
    from meshgate.identity import load_pem_certificates

    if data.lstrip().startswith(b"{"):
        return TrustBundle.from_spiffe_json(domain, data)
    roots = load_pem_certificates(data, what=what)
    if any(not _is_ca(cert) for cert in roots):
        raise BundleError(f"{what}: holds a certificate that is not a CA")
    return TrustBundle(domain, tuple(roots))


def _is_ca(cert: object) -> bool:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
