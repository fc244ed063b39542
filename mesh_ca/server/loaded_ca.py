"""What the CA API needs from a loaded CA directory (`CaAuthority`) and the CA server's own
SPIFFE ID. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, final

from mesh_ca.issuance import MAX_LEAF_TTL, MIN_LEAF_TTL, Signer
from meshgate.identity import BundleSet, SpiffeId, TrustBundle, TrustDomain

__all__ = ["CA_SERVER_PATH", "CaAuthority", "ca_server_id"]

CA_SERVER_PATH: Final = "/mesh/ca"


def ca_server_id(trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID the CA server presents; clients authenticate the CA by it."""
    return SpiffeId(trust_domain, CA_SERVER_PATH)


@final
@dataclass(frozen=True)
class CaAuthority:
    """What the API needs from a loaded CA directory."""

    trust_domain: TrustDomain
    signer: Signer
    bundle: TrustBundle
    leaf_ttl: timedelta
    token_ttl: timedelta
    admin_ids: frozenset[SpiffeId] = frozenset()
    replica: str = ""
    # The configured leaf lifetime bounds (issuance.min_ttl_seconds / max_ttl_seconds).
    min_leaf_ttl: timedelta = MIN_LEAF_TTL
    max_leaf_ttl: timedelta = MAX_LEAF_TTL

    @property
    def bundles(self) -> BundleSet:
        return BundleSet.of(self.bundle)
