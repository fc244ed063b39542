"""Stage before the work of an issuance request, throttle: the per-source rate limit, thread-safe
(handlers may run in worker threads), counted, refused with 429 and Retry-After. Pure."""

from __future__ import annotations

import threading
from typing import final

from mesh_ca.server.messages import ApiError, ApiRequest
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.ratelimit import RateLimiter, source_key

__all__ = ["IssuanceThrottle"]


@final
class IssuanceThrottle:
    def __init__(self, limiter: RateLimiter, metrics: CaMetrics) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._lock = threading.Lock()

    def admit(self, request: ApiRequest, monotonic: float) -> None:
        """Return if `request.source` may issue now; else `ApiError` 429."""
        key = source_key(request.source)
        with self._lock:
            if self._limiter.allow(key, monotonic):
                return
            wait = self._limiter.retry_after(key)
        seconds = max(1, round(wait + 0.5))
        self._metrics.rate_limited.inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many issuance requests from {request.source}; retry in {seconds} s",
            (("retry-after", str(seconds)),),
        )
