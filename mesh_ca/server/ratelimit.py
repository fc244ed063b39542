"""A per-source token-bucket rate limiter. Pure: the caller passes a monotonic `now`.

Each source (a client IP) has a bucket of `burst` tokens refilled at `rate` per second; a
request takes one token or is refused. The table is bounded: when it is full, buckets that
have refilled completely (and so carry no state worth keeping) are dropped first, then the
least recently used. `source_key` names the source a limit counts: one IPv4 address, or
one IPv6 /64, the block a single host or site usually holds.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import final

__all__ = ["RateLimiter", "source_key"]


@functools.lru_cache(maxsize=4096)  # parsing costs ~10 µs (IPv4) to ~40 µs (IPv6) a call
def source_key(address: str) -> str:
    """What per-source limits count: an IPv4 address as is; an IPv6 address by its /64,
    since one client commonly holds a whole /64 and could otherwise spread over 2^64
    addresses; an IPv4-mapped IPv6 address as its IPv4 address. Anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("%eth0")
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@final
class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int, *, max_sources: int = 10_000) -> None:
        if rate_per_second <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate_per_second > 0, burst >= 1 and max_sources >= 1 are required")
        self.rate = rate_per_second
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source` at monotonic time `now`; False when over the limit."""
        bucket = self._buckets.get(source)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def retry_after(self, source: str) -> float:
        """Seconds until `source` has one token again (0 if it has one now)."""
        bucket = self._buckets.get(source)
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _make_room(self, now: float) -> None:
        buckets = self._buckets
        if len(buckets) < self.max_sources:
            return
        # The table is in order of last use, and a bucket is updated whenever it is used,
        # so the refilled ones are all at the front: drop them from there (no scan of the
        # whole table for every new source once it is full), then the least recently used.
        full_after = self.burst / self.rate
        while buckets and now - next(iter(buckets.values())).updated >= full_after:
            buckets.popitem(last=False)
        while len(buckets) >= self.max_sources:
            buckets.popitem(last=False)
