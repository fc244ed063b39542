"""What a new set of federated bundles changes in the sidecar's trust. Pure.

The sidecar's own trust domain's bundle comes only from its own CA (`lifecycle`); the
foreign ones come from the CA's ``/v1/federation/bundles`` and replace the previous
foreign set whole: a trust domain the CA no longer lists is dropped, so its SVIDs are
refused and open connections with its workloads are cut (`sidecar.connections`).
Each bundle stays under its own trust domain (`meshgate.identity.svid.verify_svid` picks
the peer's), so a federated CA can never vouch for an ID of this or a third trust domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from meshgate.identity import BundleSet, TrustDomain
from meshgate.identity.federation import merge_federated, trust_fingerprint

__all__ = ["FederationUpdate", "apply_federated"]


@final
@dataclass(frozen=True)
class FederationUpdate:
    bundles: BundleSet
    added: tuple[TrustDomain, ...]
    removed: tuple[TrustDomain, ...]
    updated: tuple[TrustDomain, ...]  # held before and after, with other roots

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.updated)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(sorted(td.name for td in domains))}"
            for what, domains in (
                ("now trusts", self.added),
                ("no longer trusts", self.removed),
                ("new roots for", self.updated),
            )
            if domains
        ]
        return "; ".join(parts) or "unchanged"


def apply_federated(
    current: BundleSet, local: TrustDomain, federated: BundleSet
) -> FederationUpdate:
    """`current` with its foreign bundles replaced by `federated` (the local one kept)."""
    merged = merge_federated(current, local, federated)
    before = {td for td in current if td != local}
    after = {td for td in merged if td != local}
    updated = tuple(
        td
        for td in sorted(before & after, key=lambda t: t.name)
        if trust_fingerprint({td: current[td]}) != trust_fingerprint({td: merged[td]})
    )
    return FederationUpdate(
        merged if (after != before or updated) else current,
        tuple(sorted(after - before, key=lambda t: t.name)),
        tuple(sorted(before - after, key=lambda t: t.name)),
        updated,
    )
