"""SPIFFE identity, pure: IDs, trust domains, bundles, X509-SVIDs."""

from meshgate.identity.bundle import (
    BundleError,
    BundleSet,
    TrustBundle,
    bundle_sequence,
    check_bundle_update,
    load_pem_certificates,
    pem_bundle,
)
from meshgate.identity.spiffe_id import (
    MAX_SPIFFE_ID_BYTES,
    RESERVED_PATH_PREFIX,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
)
from meshgate.identity.svid import (
    SvidError,
    SvidFailure,
    VerifiedSvid,
    check_leaf_profile,
    spiffe_id_of,
    verify_svid,
)

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "RESERVED_PATH_PREFIX",
    "BundleError",
    "BundleSet",
    "SpiffeId",
    "SpiffeIdError",
    "SvidError",
    "SvidFailure",
    "TrustBundle",
    "TrustDomain",
    "VerifiedSvid",
    "bundle_sequence",
    "check_bundle_update",
    "check_leaf_profile",
    "load_pem_certificates",
    "pem_bundle",
    "spiffe_id_of",
    "verify_svid",
]
