"""Certificate issuance: the CA hierarchy and X509-SVID leaves from CSRs. Pure, time passed in."""

from mesh_ca.issuance.authority import (
    DEFAULT_INTERMEDIATE_TTL,
    DEFAULT_ROOT_TTL,
    Signer,
    make_intermediate,
    make_root,
)
from mesh_ca.issuance.leaf import (
    BACKDATE,
    DEFAULT_LEAF_TTL,
    FLOOR_LEAF_TTL,
    MAX_LEAF_TTL,
    MIN_LEAF_TTL,
    CaKeyReuse,
    IssuanceError,
    check_not_ca_key,
    issue_leaf,
    make_csr,
    parse_csr,
    parse_csr_key,
)

__all__ = [
    "BACKDATE",
    "DEFAULT_INTERMEDIATE_TTL",
    "DEFAULT_LEAF_TTL",
    "DEFAULT_ROOT_TTL",
    "FLOOR_LEAF_TTL",
    "MAX_LEAF_TTL",
    "MIN_LEAF_TTL",
    "CaKeyReuse",
    "IssuanceError",
    "Signer",
    "check_not_ca_key",
    "issue_leaf",
    "make_csr",
    "make_intermediate",
    "make_root",
    "parse_csr",
    "parse_csr_key",
]
