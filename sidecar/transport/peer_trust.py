"""Is a connection's verified peer still trusted under the current bundles? Pure.

Trust is re-checked when the bundles change (a federated trust domain dropped, a root
retired): the peer's leaf is path-validated again, with the intermediates it sent, against
the bundle of its own trust domain. Its expiry is the lifetime's business, not trust's, so
the check runs at a time inside the leaf's validity.
"""

from __future__ import annotations

from datetime import datetime
from typing import final

from cryptography import x509

from meshgate.identity import BundleSet, SvidError, VerifiedSvid, verify_svid

__all__ = ["PeerTrust", "still_trusted"]


def still_trusted(
    leaf: x509.Certificate,
    intermediates: tuple[x509.Certificate, ...],
    bundles: BundleSet,
    now: datetime,
) -> bool:
    """Does `leaf` still chain to `bundles`? A peer whose trust domain left them does not."""
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    try:
        verify_svid(leaf, intermediates, bundles, at)
    except SvidError:
        return False
    return True


@final
class PeerTrust:
    """A verified peer and the bundles it was last found trusted under."""

    __slots__ = ("bundles", "peer")

    def __init__(self, peer: VerifiedSvid, bundles: BundleSet) -> None:
        self.peer = peer
        self.bundles = bundles

    def holds(self, bundles: BundleSet, now: datetime) -> bool:
        """Still trusted under `bundles`? Verified again only when they are other ones."""
        if bundles is self.bundles:
            return True
        if not still_trusted(self.peer.leaf, self.peer.intermediates, bundles, now):
            return False
        self.bundles = bundles
        return True
