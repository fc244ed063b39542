"""Exponential backoff for the control-plane loops: 0.1 s doubling up to a cap, jittered."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import final

__all__ = ["Backoff"]

_FIRST_SECONDS = 0.1


@final
@dataclass
class Backoff:
    cap_seconds: float
    rng: random.Random = field(default_factory=random.Random)
    _pause: float = 0.0

    def next(self) -> float:
        """The next pause: 0.1 s, then doubling to the cap, each jittered to 50-100 %."""
        self._pause = min(self.cap_seconds, max(_FIRST_SECONDS, self._pause * 2))
        return self._pause * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._pause = 0.0
