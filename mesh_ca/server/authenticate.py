"""Stage authenticate: the caller's SPIFFE ID from its verified TLS client certificate, never
from the body. Fails closed: no certificate is 401, a bad or expired one 403. Pure."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Final, final

from cryptography import x509

from mesh_ca.server.loaded_ca import CaAuthority
from mesh_ca.server.messages import ApiError, ApiRequest
from meshgate.identity import SvidError, SvidFailure, VerifiedSvid, verify_svid

__all__ = ["ClientAuthenticator"]

_VERIFIED_CACHE_SIZE: Final = 4096
_VERIFIED_PRUNE_FLOOR: Final = 64


@final
class ClientAuthenticator:
    """Verifies client SVIDs against the CA's own chain and bundle, with a cache of the
    ones verified (thread-safe: handlers may run in worker threads)."""

    def __init__(self, authority: CaAuthority) -> None:
        self._authority = authority
        self._lock = threading.Lock()
        self.verified: dict[x509.Certificate, VerifiedSvid] = {}
        self._prune_verified_at = _VERIFIED_PRUNE_FLOOR  # size that triggers a sweep

    def client_svid(self, request: ApiRequest, now: datetime) -> VerifiedSvid:
        """The verified client SVID. Fails closed: no or bad certificate is a refusal."""
        cert = request.peer_cert
        if cert is None:
            raise ApiError(401, "client_cert_required", "this endpoint needs a client SVID (mTLS)")
        # Path validation costs about as much as signing; a keep-alive client sends the same
        # certificate again and again. Only a full success is cached, and the validity window
        # is still checked at every `now`.
        cached = self.verified.get(cert)
        if cached is not None and cert.not_valid_before_utc <= now <= cached.not_after:
            return cached
        authority = self._authority
        try:
            svid = verify_svid(cert, (authority.signer.cert,), authority.bundles, now)
        except SvidError as exc:
            code = "svid_expired" if exc.reason is SvidFailure.EXPIRED else "svid_invalid"
            raise ApiError(403, code, str(exc)) from None
        with self._lock:
            verified = self.verified
            if len(verified) >= self._prune_verified_at:
                # Every renewal brings a new certificate and each stayed until the cache
                # was full (~4 KB a certificate issued): drop the expired ones as we go.
                for old in [c for c, v in verified.items() if v.not_after < now]:
                    del verified[old]
                if len(verified) >= _VERIFIED_CACHE_SIZE:
                    verified.clear()
                self._prune_verified_at = max(_VERIFIED_PRUNE_FLOOR, 2 * len(verified))
            verified[cert] = svid
        return svid
