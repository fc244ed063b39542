"""Rotation timing: renew at 50 % ± 10 % of the lifetime; capped jittered backoff until expiry."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.identity.rotation import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    MIN_RETRY,
    RenewalAction,
    backoff,
    next_rotation,
    renewal_action,
    retry_at,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FixedRng:
    """Returns `a + fraction·(b - a)`: the lowest, middle or highest draw on demand."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + self.fraction * (b - a)


lifetimes = st.integers(min_value=1, max_value=10 * 24 * 3600).map(lambda s: timedelta(seconds=s))
seeds = st.integers(min_value=0, max_value=2**32)


def test_rotation_is_at_half_the_lifetime_without_jitter() -> None:
    assert next_rotation(T0, T0 + timedelta(hours=1), FixedRng(0.5)) == T0 + timedelta(minutes=30)


def test_rotation_jitter_spans_forty_to_sixty_percent() -> None:
    hour = timedelta(hours=1)
    assert next_rotation(T0, T0 + hour, FixedRng(0.0)) == T0 + timedelta(minutes=24)
    assert next_rotation(T0, T0 + hour, FixedRng(1.0)) == T0 + timedelta(minutes=36)


def test_rotation_clamps_a_misbehaving_rng() -> None:
    hour = timedelta(hours=1)
    assert next_rotation(T0, T0 + hour, FixedRng(-5.0)) == T0 + timedelta(minutes=24)
    assert next_rotation(T0, T0 + hour, FixedRng(9.0)) == T0 + timedelta(minutes=36)


def test_rotation_refuses_an_empty_lifetime() -> None:
    with pytest.raises(ValueError, match="lifetime is empty"):
        next_rotation(T0, T0, FixedRng(0.5))


@given(lifetime=lifetimes, seed=seeds)
def test_rotation_always_leaves_forty_percent_for_retries(lifetime: timedelta, seed: int) -> None:
    at = next_rotation(T0, T0 + lifetime, random.Random(seed))
    assert T0 + lifetime * 0.4 - timedelta(microseconds=1) <= at
    assert at <= T0 + lifetime * 0.6 + timedelta(microseconds=1)


def test_rotation_jitter_actually_spreads_sidecars() -> None:
    rng = random.Random(7)
    times = {next_rotation(T0, T0 + timedelta(hours=1), rng) for _ in range(50)}
    assert len(times) == 50
    assert max(times) - min(times) > timedelta(minutes=8)


def test_backoff_doubles_then_caps() -> None:
    top = FixedRng(1.0)
    assert [backoff(n, top).total_seconds() for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(10_000, top) == BACKOFF_CAP


def test_backoff_equal_jitter_keeps_at_least_half_the_step() -> None:
    assert backoff(3, FixedRng(0.0)) == timedelta(seconds=4)
    assert backoff(0, FixedRng(0.0)) == BACKOFF_BASE / 2


@given(attempt=st.integers(min_value=0, max_value=10_000), seed=seeds)
def test_backoff_is_positive_and_capped(attempt: int, seed: int) -> None:
    wait = backoff(attempt, random.Random(seed))
    assert BACKOFF_BASE / 2 <= wait <= BACKOFF_CAP


def test_backoff_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff(-1, FixedRng(0.5))
    with pytest.raises(ValueError, match="0 < base <= cap"):
        backoff(0, FixedRng(0.5), base=timedelta(0))
    with pytest.raises(ValueError, match="0 < base <= cap"):
        backoff(0, FixedRng(0.5), base=timedelta(seconds=5), cap=timedelta(seconds=1))


def test_retry_far_from_expiry_is_the_backoff() -> None:
    expiry = T0 + timedelta(hours=1)
    assert retry_at(T0, expiry, 2, FixedRng(1.0)) == T0 + timedelta(seconds=4)


def test_retry_close_to_expiry_never_sleeps_past_it() -> None:
    expiry = T0 + timedelta(seconds=40)
    assert retry_at(T0, expiry, 9, FixedRng(1.0)) == T0 + timedelta(seconds=20)


def test_retry_after_expiry_goes_on_at_the_capped_rate() -> None:
    expiry = T0 - timedelta(hours=3)
    assert retry_at(T0, expiry, 50, FixedRng(1.0)) == T0 + BACKOFF_CAP


@given(
    left_s=st.floats(min_value=-7200, max_value=7200, allow_nan=False),
    attempt=st.integers(min_value=0, max_value=100),
    seed=seeds,
)
def test_retry_is_always_in_the_future_and_bounded(left_s: float, attempt: int, seed: int) -> None:
    expiry = T0 + timedelta(seconds=left_s)
    at = retry_at(T0, expiry, attempt, random.Random(seed))
    assert T0 + MIN_RETRY <= at <= T0 + BACKOFF_CAP
    if expiry - T0 >= 2 * MIN_RETRY:
        assert at < expiry  # one more try while the SVID can still be renewed


@given(left_s=st.floats(min_value=2, max_value=3600, allow_nan=False), seed=seeds)
def test_retries_until_expiry_keep_trying_right_up_to_it(left_s: float, seed: int) -> None:
    """Follow the retry schedule from `now` toward expiry: the last try is within 2 s of it."""
    rng, now, expiry = random.Random(seed), T0, T0 + timedelta(seconds=left_s)
    attempt, last = 0, T0
    while now < expiry:
        last, now = now, retry_at(now, expiry, attempt, rng)
        attempt += 1
        assert attempt < 200
    assert expiry - last <= 2 * MIN_RETRY


def test_renewal_action_by_validity_and_token() -> None:
    expiry = T0 + timedelta(minutes=1)
    assert renewal_action(T0, expiry, token_available=False) is RenewalAction.RENEW
    assert renewal_action(expiry, expiry, token_available=True) is RenewalAction.BOOTSTRAP
    assert renewal_action(expiry, expiry, token_available=False) is RenewalAction.WAIT_FOR_TOKEN
    refused = renewal_action(T0, expiry, token_available=True, renew_refused=True)
    assert refused is RenewalAction.BOOTSTRAP
    retried = renewal_action(T0, expiry, token_available=False, renew_refused=True)
    assert retried is RenewalAction.RENEW
