"""The identity lifecycle under a mock clock, with an in-process fake CA and real TLS in memory.

Simulated hours pass in milliseconds: trio's `MockClock(autojump_threshold=0)` drives a
`TrioWallClock`, so certificates carry real dates that move with the mock clock. OpenSSL
checks certificate validity against the real system clock, which no mock can move; the
handshake helper therefore turns off OpenSSL's own time check on the contexts it uses and
the time rules are checked at mock time by `peer_svid` (the same post-handshake check the
data path runs). Every other OpenSSL check (chain, roots, client certificate) stays on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509

from mesh_ca.client import CaClientError, CaUnavailable, IssuedSvid
from mesh_ca.issuance import issue_leaf, make_csr, make_root
from mesh_ca.tokens import new_token
from meshgate.clock import TrioWallClock
from meshgate.identity import BundleSet, SpiffeId, TrustBundle, spiffe_id_of
from meshgate.keys import PrivateKey, generate_key
from meshgate.transport.mtls import peer_svid
from sidecar.identity.blocking import inline
from sidecar.identity.credentials import Credentials, CredentialStore
from sidecar.identity.lifecycle import CaClientLike
from sidecar.identity.run import run_identity
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.stats import IdentityStats
from tests.pki import TestPki as Pki

X509_V_FLAG_NO_CHECK_TIME = 0x200000


class FakeCa:
    """Signs with the real issuance code; can be down; one-time tokens; refuses expired SVIDs."""

    def __init__(self, pki: Pki, clock: TrioWallClock, ttl: timedelta) -> None:
        self.pki, self.clock, self.ttl = pki, clock, ttl
        self.up = True
        self.tokens: dict[str, SpiffeId] = {}
        self.bundle = pki.bundle
        self.federated = BundleSet()
        self.revoked_ids: set[SpiffeId] = set()
        self.revoked_serials: set[int] = set()
        self.bootstraps = 0
        self.renewals = 0
        self.calls_while_down = 0

    def token(self, spiffe_id: SpiffeId) -> str:
        text = new_token()[0]
        self.tokens[text] = spiffe_id
        return text

    def client(self, bundles: BundleSet) -> CaClientLike:
        assert self.pki.trust_domain in bundles
        return FakeClient(self)

    def check_up(self) -> None:
        if not self.up:
            self.calls_while_down += 1
            raise CaUnavailable(None, "unreachable", "fake CA is down")

    def issue(self, spiffe_id: SpiffeId, key: PrivateKey) -> IssuedSvid:
        cert = issue_leaf(make_csr(key), spiffe_id, self.pki.signer, self.clock.now(), self.ttl)
        return IssuedSvid(
            spiffe_id,
            (cert, self.pki.intermediate),
            self.bundle,
            cert.not_valid_after_utc,
            cert.serial_number,
        )


class FakeClient:
    def __init__(self, ca: FakeCa) -> None:
        self.ca = ca

    async def bootstrap(
        self, token: str, key: PrivateKey, expected: SpiffeId | None = None
    ) -> IssuedSvid:
        await trio.lowlevel.checkpoint()
        self.ca.check_up()
        bound = self.ca.tokens.get(token)
        if bound is not None and expected is not None and bound != expected:
            raise CaClientError(403, "token_wrong_id", f"token bound to {bound}, not {expected}")
        spiffe_id = self.ca.tokens.pop(token, None)
        if spiffe_id is None:
            raise CaClientError(401, "token_refused", "join token refused: unknown or used")
        self.ca.bootstraps += 1
        return self.ca.issue(spiffe_id, key)

    async def renew(
        self, chain: Sequence[x509.Certificate], key: PrivateKey, new_key: PrivateKey
    ) -> IssuedSvid:
        await trio.lowlevel.checkpoint()
        self.ca.check_up()
        leaf = chain[0]
        spiffe_id = spiffe_id_of(leaf)
        if self.ca.clock.now() >= leaf.not_valid_after_utc:
            raise CaClientError(401, "expired", "current SVID has expired")
        if spiffe_id in self.ca.revoked_ids or leaf.serial_number in self.ca.revoked_serials:
            raise CaClientError(403, "revoked", "current SVID is revoked")
        self.ca.renewals += 1
        return self.ca.issue(spiffe_id, new_key)

    async def fetch_bundle(self) -> TrustBundle:
        await trio.lowlevel.checkpoint()
        self.ca.check_up()
        return self.ca.bundle

    async def fetch_federated_bundles(self) -> BundleSet:
        await trio.lowlevel.checkpoint()
        self.ca.check_up()
        return self.ca.federated

    async def fetch_revocations(self) -> tuple[frozenset[SpiffeId], frozenset[int]]:
        await trio.lowlevel.checkpoint()
        self.ca.check_up()
        return frozenset(self.ca.revoked_ids), frozenset(self.ca.revoked_serials)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Sidecar:
    """One sidecar's identity: settings, store and stats, with its token file."""

    def __init__(
        self, tmp: Path, pki: Pki, ca: FakeCa, service: str, poll: timedelta = timedelta(seconds=30)
    ) -> None:
        self.spiffe_id = pki.spiffe_id("shop", service)
        self.dir = tmp / service
        self.dir.mkdir()
        bundle_file = self.dir / "bundle.pem"
        bundle_file.write_bytes(pki.bundle_pem())
        self.token_file = self.dir / "token"
        self.token_file.write_text(ca.token(self.spiffe_id))
        self.settings = IdentitySettings(
            spiffe_id=self.spiffe_id,
            bundle_file=bundle_file,
            ca_addresses=("127.0.0.1:1",),
            token_file=self.token_file,
            state_dir=self.dir / "state",
            poll_interval_seconds=poll.total_seconds(),
        )
        self.store = CredentialStore()
        self.stats = IdentityStats()
        self.ca = ca

    async def start(self, nursery: trio.Nursery, clock: TrioWallClock) -> None:
        await nursery.start(self.run, clock)

    async def run(
        self, clock: TrioWallClock, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await run_identity(
            self.settings,
            self.store,
            clock,
            client_factory=self.ca.client,
            rng=random.Random(str(self.spiffe_id)),
            stats=self.stats,
            run_blocking=inline,
            task_status=task_status,
        )

    def live(self, now: datetime) -> Credentials:
        creds = self.store.usable(now)
        assert creds is not None, f"{self.spiffe_id}: no usable SVID at {now}: {self.stats}"
        return creds


async def handshake(client: Credentials, server: Credentials, now: datetime) -> None:
    """A full TLS 1.3 mTLS handshake in memory with both sides' current contexts."""
    for context in (client.client_context, server.server_context):
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME  # see the module docstring
    a, b = trio.testing.memory_stream_pair()
    client_tls = trio.SSLStream(a, client.client_context)
    server_tls = trio.SSLStream(b, server.server_context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_tls.do_handshake)
        nursery.start_soon(server_tls.do_handshake)
    assert peer_svid(client_tls, client.bundles, now).spiffe_id == server.spiffe_id
    assert peer_svid(server_tls, server.bundles, now).spiffe_id == client.spiffe_id
    await client_tls.send_all(b"ping")
    assert await server_tls.receive_some(4) == b"ping"


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def clock(pki: Pki, autojump_clock: trio.testing.MockClock) -> TrioWallClock:
    return TrioWallClock(epoch=pki.now)  # async: it reads trio's (mock) time


async def _rotate_for(
    tmp_path: Path,
    pki: Pki,
    clock: TrioWallClock,
    ttl: timedelta,
    span: timedelta,
    every: timedelta,
) -> tuple[Sidecar, Sidecar, int]:
    ca = FakeCa(pki, clock, ttl)
    # Polling is tested below; here it would only multiply the work by thousands of polls.
    poll = timedelta(minutes=10)
    web, db = Sidecar(tmp_path, pki, ca, "web", poll), Sidecar(tmp_path, pki, ca, "db", poll)
    samples = 0
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        await db.start(nursery, clock)
        end = clock.now() + span
        while clock.now() < end:
            now = clock.now()
            await handshake(web.live(now), db.live(now), now)
            await handshake(db.live(now), web.live(now), now)
            samples += 1
            await trio.sleep(every.total_seconds())
        nursery.cancel_scope.cancel()
    return web, db, samples


async def test_48_hours_of_one_hour_svids_rotate_with_no_moment_unusable(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    web, db, samples = await _rotate_for(
        tmp_path, pki, clock, timedelta(hours=1), timedelta(hours=48), timedelta(minutes=13)
    )
    assert samples > 200
    for side in (web, db):
        rotations = side.stats.results("rotation")
        assert set(rotations) == {"ok"}, side.stats
        assert 80 <= rotations["ok"] <= 120  # every 24-36 minutes
        assert side.stats.last_error is None


async def test_short_svids_rotate_every_minute_with_no_moment_unusable(
    tmp_path: Path,
    pki: Pki,
    clock: TrioWallClock,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mesh_ca.issuance.leaf.MIN_LEAF_TTL", timedelta(seconds=30))
    web, db, samples = await _rotate_for(
        tmp_path, pki, clock, timedelta(minutes=2), timedelta(hours=1), timedelta(seconds=23)
    )
    assert samples > 150
    for side in (web, db):
        assert set(side.stats.results("rotation")) == {"ok"}
        assert side.stats.results("rotation")["ok"] >= 45


async def test_ca_down_longer_than_a_rotation_interval_keeps_serving_and_renews_when_back(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web, db = Sidecar(tmp_path, pki, ca, "web"), Sidecar(tmp_path, pki, ca, "db")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        await db.start(nursery, clock)
        first = web.live(clock.now()).serial
        await trio.sleep(10 * 60)
        ca.up = False
        for _ in range(40):  # 40 minutes down: past the 24-36 minute rotation point
            await trio.sleep(60)
            now = clock.now()
            await handshake(web.live(now), db.live(now), now)
        assert web.live(clock.now()).serial == first
        failed = web.stats.results("rotation").get("ca_unavailable", 0)
        assert 3 <= failed <= 60, "backoff: retried, but not in a busy loop"
        ca.up = True
        await trio.sleep(61)
        now = clock.now()
        assert web.live(now).serial != first
        assert web.stats.results("rotation")["ok"] == 1
        await handshake(web.live(now), db.live(now), now)
        nursery.cancel_scope.cancel()


async def test_ca_down_past_expiry_is_unusable_then_recovers_with_a_fresh_token(
    tmp_path: Path,
    pki: Pki,
    clock: TrioWallClock,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    caplog.set_level(logging.INFO, logger="sidecar.identity")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        expiry = web.live(clock.now()).not_after
        ca.up = False
        await trio.sleep((expiry - clock.now()).total_seconds() + 1)
        assert web.store.usable(clock.now()) is None  # fails closed: no mTLS either way
        ca.up = True
        await trio.sleep(30 * 60)
        assert web.store.usable(clock.now()) is None  # the CA refuses to renew expired SVIDs
        assert "was already used; join tokens are one-time" in caplog.text
        assert "mesh-ca token create" in caplog.text
        web.token_file.write_text(ca.token(web.spiffe_id))
        await trio.sleep(2)  # the token file is watched: no waiting out the 60 s backoff
        assert web.live(clock.now()).not_after > clock.now() + timedelta(minutes=50)
        assert ca.bootstraps == 2
        nursery.cancel_scope.cancel()


async def test_revocations_are_polled_and_published(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    changes: list[int] = []
    web.store.subscribe(lambda: changes.append(len(web.store.revocations.spiffe_ids)))
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        bad = pki.spiffe_id("shop", "intruder")
        ca.revoked_ids.add(bad)
        ca.revoked_serials.add(12345)
        await trio.sleep(31)
        assert web.store.revocations.spiffe_ids == frozenset({bad})
        assert web.store.revocations.serials == frozenset({12345})
        assert web.store.revocations.refuses(bad, 1)
        assert web.stats.results("revocations") == {"updated": 1}
        await trio.sleep(5 * 60)
        assert web.stats.results("revocations") == {"updated": 1}, "unchanged: not republished"
        nursery.cancel_scope.cancel()
    assert 1 in changes


async def test_own_svid_revoked_is_replaced_at_once_with_a_fresh_token(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        first = web.live(clock.now()).serial
        web.token_file.write_text(ca.token(web.spiffe_id))
        ca.revoked_serials.add(first)
        await trio.sleep(35)
        assert web.live(clock.now()).serial != first
        assert ca.bootstraps == 2
        assert web.stats.results("revocations")["own_svid_revoked"] == 1
        nursery.cancel_scope.cancel()


async def test_a_new_bundle_builds_fresh_contexts_and_is_saved(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        before = web.live(clock.now())
        new_root = make_root(pki.trust_domain, generate_key(), pki.now)
        ca.bundle = TrustBundle(pki.trust_domain, (pki.root, new_root))
        await trio.sleep(31)
        after = web.live(clock.now())
        assert after.serial == before.serial
        assert after.bundles[pki.trust_domain].roots == (pki.root, new_root)
        assert after.server_context is not before.server_context
        assert after.client_context is not before.client_context
        assert web.stats.results("bundle") == {"updated": 1}
        saved = (web.dir / "state" / "bundle.pem").read_bytes()
        assert saved.count(b"BEGIN CERTIFICATE") == 2
        nursery.cancel_scope.cancel()


async def test_a_bundle_that_drops_our_root_is_refused_and_the_old_one_kept(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        before = web.live(clock.now())
        ca.bundle = TrustBundle(
            pki.trust_domain, (make_root(pki.trust_domain, generate_key(), pki.now),)
        )
        await trio.sleep(31)
        assert web.live(clock.now()) is before
        assert web.stats.results("bundle") == {"invalid": 1}
        nursery.cancel_scope.cancel()


async def test_an_empty_bundle_makes_the_domain_untrusted_until_authorities_return(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    # SPIFFE X509-SVID spec 6.2: no x509-svid entry means the trust domain has no X.509
    # authority; its SVIDs are refused, the previous bundle is not kept in force.
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    peer = pki.spiffe_id("shop", "api")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        assert not web.store.revocations.refuses(peer, 1)
        ca.bundle = TrustBundle.from_spiffe_json(pki.trust_domain, b'{"keys": []}')
        await trio.sleep(31)
        assert web.store.revocations.refuses(peer, 1)
        assert web.store.revocations.untrusted_domains == frozenset({pki.trust_domain})
        assert web.stats.results("bundle") == {"untrusted": 1}
        ca.bundle = pki.bundle
        await trio.sleep(31)
        assert not web.store.revocations.refuses(peer, 1)
        nursery.cancel_scope.cancel()


async def test_a_bundle_whose_sequence_goes_back_is_refused(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    new_root = make_root(pki.trust_domain, generate_key(), pki.now)
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        ca.bundle = TrustBundle(pki.trust_domain, (pki.root, new_root), sequence=7)
        await trio.sleep(31)
        assert web.live(clock.now()).bundles[pki.trust_domain].sequence == 7
        # A replay of an older bundle (without the new root) is a rollback: refused.
        ca.bundle = TrustBundle(pki.trust_domain, (pki.root,), sequence=6)
        await trio.sleep(31)
        assert web.live(clock.now()).bundles[pki.trust_domain].roots == (pki.root, new_root)
        assert web.stats.results("bundle") == {"updated": 1, "rollback": 1}
        nursery.cancel_scope.cancel()


async def test_restart_with_a_valid_stored_svid_needs_no_token(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        serial = web.live(clock.now()).serial
        nursery.cancel_scope.cancel()
    web.token_file.unlink()
    web.store = CredentialStore()
    await trio.sleep(10 * 60)
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        assert web.live(clock.now()).serial == serial
        assert ca.bootstraps == 1
        assert web.stats.results("start") == {"bootstrapped": 1, "stored": 1}
        nursery.cancel_scope.cancel()


async def test_restart_with_an_expired_svid_and_a_spent_token_says_so_and_waits(
    tmp_path: Path,
    pki: Pki,
    clock: TrioWallClock,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        nursery.cancel_scope.cancel()
    web.store = CredentialStore()
    await trio.sleep(2 * 3600)
    caplog.set_level(logging.INFO, logger="sidecar.identity")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run, clock)
        await trio.sleep(5 * 60)
        assert web.store.current is None
        assert "stored SVID in" in caplog.text
        assert "expired at" in caplog.text
        assert "was already used; join tokens are one-time" in caplog.text
        assert ca.bootstraps == 1, "a spent token is never sent again"
        web.token_file.write_text(ca.token(web.spiffe_id))
        await trio.sleep(61)
        assert web.live(clock.now()) is not None
        nursery.cancel_scope.cancel()
    assert web.token_file.read_text() not in caplog.text, "tokens are never logged"


async def test_a_refused_token_is_not_sent_again(
    tmp_path: Path,
    pki: Pki,
    clock: TrioWallClock,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    ca.tokens.clear()  # the CA does not know the token (expired, or another CA's)
    attempts: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run, clock)
        await trio.sleep(10 * 60)
        attempts.append(web.stats.results("bootstrap").get("refused", 0))
        nursery.cancel_scope.cancel()
    assert attempts == [1]
    assert "the CA refused join token" in caplog.text
    assert web.store.current is None


async def test_a_token_for_another_id_is_refused_once_kept_unspent_and_reported(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    ca = FakeCa(pki, clock, timedelta(hours=1))
    web = Sidecar(tmp_path, pki, ca, "web")
    other = pki.spiffe_id("shop", "orders")
    web.token_file.write_text(ca.token(other))  # made for orders, given to web
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run, clock)
        await trio.sleep(10 * 60)
        nursery.cancel_scope.cancel()
    assert web.store.current is None
    assert web.stats.results("bootstrap") == {"wrong_id": 1}, "sent once, not again"
    blocked = web.stats.blocked
    assert blocked is not None
    assert blocked.code == "token_wrong_id"
    assert str(other) in blocked.message
    assert str(web.spiffe_id) in blocked.message
    assert other in ca.tokens.values(), "the CA kept the token for its own ID"
    assert not (web.dir / "state" / "token.used").exists(), "not recorded as spent"
