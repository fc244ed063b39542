"""Durations as operators type them: ``90s``, ``10m``, ``1h``, ``24h``, ``7d``. Pure."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = ["format_duration", "parse_duration"]

_DURATION_RE: Final = re.compile(r"([0-9]{1,9})(s|m|h|d)")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """A positive whole number with one unit (s, m, h, d); raises ValueError otherwise."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 10m, 1h or 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: duration must be positive")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The largest unit that divides `value` exactly: 3600 s -> ``1h``."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
