"""A bounded memo of peer leaves that already passed the SVID checks. Pure (no trio).

Re-verifying a peer's leaf after every handshake (`meshgate.transport.mtls.peer_svid`: the SVID
profile, then full path validation against the peer's trust-domain bundle) costs ~1 ms of
CPU per side with cryptography's verifier, as much as the TLS handshake itself. The result
depends only on the leaf bytes, the bundle set and the time, so it is remembered per
(leaf DER, bundle set object): a new bundle set (rotation, new roots) is a new object and
misses, and the validity window is checked against `now` on every hit. Revocation is not
cached here: callers check it on every handshake. Fails closed: any miss runs the full check.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import final

from meshgate.identity import BundleSet, VerifiedSvid
from meshgate.transport.mtls import PeerCertSource, peer_svid

__all__ = ["VerifiedLeafCache"]

_SWEEP_FLOOR = 16


@final
class VerifiedLeafCache:
    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._sweep_at = _SWEEP_FLOOR  # size that triggers a sweep of expired leaves
        self._entries: OrderedDict[bytes, tuple[BundleSet, VerifiedSvid]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def verify(self, tls: PeerCertSource, bundles: BundleSet, now: datetime) -> VerifiedSvid:
        """`peer_svid(tls, bundles, now)`, answered from memory when the same leaf was
        verified against the same bundle set and is still within its validity window."""
        der = tls.getpeercert(binary_form=True)
        if isinstance(der, bytes) and der:
            entry = self._entries.get(der)
            if entry is not None:
                cached_bundles, verified = entry
                leaf = verified.leaf
                if (
                    cached_bundles is bundles
                    and leaf.not_valid_before_utc <= now <= verified.not_after
                ):
                    self._entries.move_to_end(der)
                    self.hits += 1
                    return verified
                del self._entries[der]
        self.misses += 1
        verified = peer_svid(tls, bundles, now)  # raises SvidError: nothing is remembered
        if isinstance(der, bytes) and der:
            entries = self._entries
            if len(entries) >= self._sweep_at:
                # Rotations bring new leaves (each pinning the bundle set of its day):
                # drop the expired ones rather than keep them until the cap.
                for old in [k for k, (_, v) in entries.items() if v.not_after < now]:
                    del entries[old]
                self._sweep_at = max(_SWEEP_FLOOR, 2 * len(entries))
            entries[der] = (bundles, verified)
            if len(entries) > self.max_entries:
                entries.popitem(last=False)
        return verified
