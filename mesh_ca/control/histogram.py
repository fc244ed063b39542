"""Latency histograms as the control plane keeps them: merge, quantile. Pure.

A histogram is a tuple of upper bounds (seconds) and one more count than bounds (the last
is +Inf), not cumulative. Sidecars of one version share one set of bounds; when two sets
differ, the counts of the newcomer go to the smallest kept bound at or above each of its
bucket's upper bounds (or +Inf), so a quantile may only be over-, never under-estimated.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

__all__ = ["Histogram"]


@final
@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]
    sum_seconds: float = 0.0

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls(tuple(bounds), [0] * (len(bounds) + 1))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, bounds: Sequence[float], counts: Sequence[int], sum_seconds: float) -> None:
        """Add another histogram's counts (re-bucketed onto ours if its bounds differ)."""
        self.sum_seconds += sum_seconds
        if tuple(bounds) == self.bounds:
            for i, n in enumerate(counts):
                self.counts[i] += n
            return
        for i, n in enumerate(counts):
            if not n:
                continue
            upper = bounds[i] if i < len(bounds) else float("inf")
            self.counts[bisect.bisect_left(self.bounds, upper)] += n

    def quantile(self, q: float) -> float | None:
        """The `q` quantile (0..1) in seconds, interpolated linearly inside its bucket as
        Prometheus' histogram_quantile does; None with no observations. A quantile in the
        +Inf bucket is reported as the last bound (we know no more)."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i > 0 else 0.0
                upper = self.bounds[i]
                return lower + (upper - lower) * ((rank - seen) / n)
            seen += n
        return self.bounds[-1]
