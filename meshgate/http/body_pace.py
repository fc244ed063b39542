"""How long a request body may take: a total budget that grows with the bytes received. Pure.

A per-read idle timeout alone never cuts a body that sends one byte a second (slow POST,
"R-U-Dead-Yet"): each byte restarts it, and a few hundred such clients hold every
connection slot. So a body must also be complete `timeout_seconds` after it started, plus
one second for every `min_rate_bytes_per_second` bytes already received (Apache
mod_reqtimeout's `body=...,MinRate=...`): a large upload at a healthy rate is never cut,
a trickle is cut after about `timeout_seconds`. `min_rate_bytes_per_second = 0` makes
`timeout_seconds` a hard total. Times are `trio.current_time()`-like floats passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["BodyPace"]


@final
@dataclass(frozen=True, slots=True)
class BodyPace:
    timeout_seconds: float
    min_rate_bytes_per_second: int

    def deadline(self, started: float, received: int) -> float:
        """When a body that began at `started` and has `received` bytes so far is too slow."""
        grace = received / self.min_rate_bytes_per_second if self.min_rate_bytes_per_second else 0.0
        return started + self.timeout_seconds + grace
