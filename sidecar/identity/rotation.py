"""When to rotate an SVID and when to retry a failed renewal. Pure: `now` and `rng` are passed in.

Rotation happens at 50 % of the certificate's lifetime, jittered by ±10 % of the lifetime so
that sidecars started together do not renew together. A failed renewal is retried with
capped exponential backoff (equal jitter). Before expiry the retries never sleep past the
expiry, so the last attempts crowd toward it ("retry until expiry"); after expiry renewal
cannot work (the CA refuses expired SVIDs) and only a fresh join token can recover, so the
retries go on at the capped rate until the CA or an operator brings one.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Final, Protocol

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "MIN_RETRY",
    "ROTATE_AT_FRACTION",
    "ROTATE_JITTER_FRACTION",
    "RenewalAction",
    "Rng",
    "backoff",
    "next_rotation",
    "renewal_action",
    "retry_at",
]

ROTATE_AT_FRACTION: Final = 0.5
ROTATE_JITTER_FRACTION: Final = 0.1
BACKOFF_BASE: Final = timedelta(seconds=1)
BACKOFF_CAP: Final = timedelta(seconds=60)
# The shortest wait between two attempts, also close to expiry: never a busy loop.
MIN_RETRY: Final = timedelta(seconds=1)
_MAX_EXPONENT: Final = 32  # 2**32 s is far past any cap; keeps the float finite


class Rng(Protocol):
    """What the timing needs from a random source; `random.Random` fits."""

    def uniform(self, a: float, b: float) -> float: ...


class RenewalAction(enum.StrEnum):
    """What to do when the current SVID is due for replacement."""

    RENEW = "renew"  # still valid: renew over mTLS with the current SVID
    BOOTSTRAP = "bootstrap"  # expired (or refused), and a fresh join token is available
    WAIT_FOR_TOKEN = "wait_for_token"  # noqa: S105 - expired, no fresh token: only an operator can help


def next_rotation(not_before: datetime, not_after: datetime, rng: Rng) -> datetime:
    """The moment to renew a certificate valid from `not_before` to `not_after`.

    Uniform in [40 %, 60 %] of the lifetime, so the certificate still has at least 40 % of
    its lifetime left for retries when the CA is down.
    """
    if not_after <= not_before:
        raise ValueError(f"certificate lifetime is empty: notBefore {not_before} >= {not_after}")
    lifetime = not_after - not_before
    low = ROTATE_AT_FRACTION - ROTATE_JITTER_FRACTION
    high = ROTATE_AT_FRACTION + ROTATE_JITTER_FRACTION
    fraction = min(max(rng.uniform(low, high), low), high)  # clamp: rng is injected
    return not_before + lifetime * fraction


def backoff(
    attempt: int,
    rng: Rng,
    *,
    base: timedelta = BACKOFF_BASE,
    cap: timedelta = BACKOFF_CAP,
) -> timedelta:
    """The wait before retry `attempt` (0 first): in [d/2, d] with d = min(cap, base·2^attempt).

    Equal jitter: at least half the exponential step, so retries spread out but never
    collapse to zero.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base <= timedelta(0) or cap < base:
        raise ValueError(f"backoff needs 0 < base <= cap, got base {base}, cap {cap}")
    step = min(cap, base * float(2 ** min(attempt, _MAX_EXPONENT)))
    return step * rng.uniform(0.5, 1.0)


def retry_at(
    now: datetime,
    not_after: datetime,
    attempt: int,
    rng: Rng,
    *,
    base: timedelta = BACKOFF_BASE,
    cap: timedelta = BACKOFF_CAP,
) -> datetime:
    """When to retry after failed attempt number `attempt`, for an SVID expiring at `not_after`.

    Before expiry the wait is the backoff but never reaches past the expiry: it is cut to
    half the time left (at least `MIN_RETRY`), so a CA that returns a few seconds before
    expiry is still caught. After expiry it is the plain capped backoff.
    """
    wait = backoff(attempt, rng, base=base, cap=cap)
    left = not_after - now
    if left > timedelta(0) and wait >= left:
        wait = max(left / 2, MIN_RETRY)
    return now + max(wait, MIN_RETRY)


def renewal_action(
    now: datetime, not_after: datetime, *, token_available: bool, renew_refused: bool = False
) -> RenewalAction:
    """Renew while the SVID is valid. Once it has expired, or the CA refused to renew it
    (e.g. it was revoked), only a fresh join token brings a new one; without a token a
    valid SVID keeps trying to renew (the refusal may have been transient)."""
    expired = now >= not_after
    if token_available and (expired or renew_refused):
        return RenewalAction.BOOTSTRAP
    return RenewalAction.WAIT_FOR_TOKEN if expired else RenewalAction.RENEW
