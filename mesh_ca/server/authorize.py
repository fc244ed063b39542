"""Stage authorize: who may have what. An SVID only for a workload ID of this trust domain,
a revocation only of one, admin actions only for the IDs in server.admin_ids (never any
SVID that chains to the CA). Each fails closed with an `ApiError`. Pure."""

from __future__ import annotations

from mesh_ca.api import reserved_revocation
from mesh_ca.server.messages import ApiError
from mesh_ca.store import StateStore
from meshgate.identity import SpiffeId, TrustDomain, VerifiedSvid

__all__ = ["check_issuable", "check_revocable", "require_admin"]


def check_issuable(trust_domain: TrustDomain, spiffe_id: SpiffeId) -> None:
    """403 unless the CA may issue an SVID for `spiffe_id`."""
    if spiffe_id.trust_domain != trust_domain:
        raise ApiError(
            403, "wrong_trust_domain", f"{spiffe_id} is not in trust domain {trust_domain}"
        )
    if spiffe_id.reserved or not spiffe_id.path:
        raise ApiError(403, "reserved_id", f"{spiffe_id} is reserved for the mesh itself")


def check_revocable(trust_domain: TrustDomain, spiffe_id: SpiffeId) -> None:
    """A workload ID of this trust domain (as `mesh-ca revoke` checks): any other would
    match no certificate of this CA, yet go to every sidecar in the revocation list."""
    if not spiffe_id.member_of(trust_domain):
        raise ApiError(
            400, "bad_request", f"spiffe_id: {spiffe_id} is not in trust domain {trust_domain}"
        )
    if not spiffe_id.path:
        raise ApiError(
            400, "bad_request", f"spiffe_id: {spiffe_id} names the trust domain, not a workload"
        )
    if spiffe_id.reserved:
        raise ApiError(400, "bad_request", f"spiffe_id: {reserved_revocation(spiffe_id)}")


def require_admin(
    svid: VerifiedSvid, admin_ids: frozenset[SpiffeId], store: StateStore
) -> SpiffeId:
    """The admin's ID. Fails closed: only IDs listed in server.admin_ids, never any SVID,
    and not one that is revoked."""
    if svid.spiffe_id not in admin_ids:
        raise ApiError(403, "not_admin", f"{svid.spiffe_id} is not a CA admin")
    if store.is_revoked(svid.spiffe_id, svid.leaf.serial_number):
        raise ApiError(403, "revoked", f"{svid.spiffe_id} is revoked")
    return svid.spiffe_id
