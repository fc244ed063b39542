"""Runs the sidecar's identity: bootstrap or reload, rotate, poll bundle and revocations.

The trio shell around the pure parts (`rotation`, `state`, `credentials`). The SVID is
replaced by validate-then-publish: a new `Credentials` (with fresh TLS contexts) is built
first and only then published, so open connections keep the context they were made with
and a bad answer from the CA never goes live. While the CA is unreachable the current SVID
keeps serving and renewal is retried with backoff; once it has expired the store's
`usable(now)` is None, so the data path refuses mTLS both ways and readiness is false
(fails closed). It recovers by itself: renewal when the CA returns in time, otherwise a
bootstrap as soon as a fresh join token is in the token file. Background loops log, count
and carry on. What blocks a new SVID (no token, CA unreachable, a refused token, a token
for another ID) and a failed save to ``state_dir`` are kept in `IdentityStats` for
``/readyz``. A bootstrap names the expected SPIFFE ID, so the CA refuses a token bound to
another one without consuming it.

Why one module: `_Lifecycle` is the one trio shell that owns the published
`Credentials` and the `IdentityStats`; bootstrap, renewal, bundle and revocation polling
all replace or read that one state, and the pure decisions are already apart (`rotation`,
`state`, `credentials`). Split, each loop would need the others' locks and counters.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh_ca.client import CaClientError, CaUnavailable
from meshgate.clock import Clock
from meshgate.exit_codes import ExitCode, StartupError
from meshgate.identity import (
    BundleError,
    BundleSet,
    SpiffeId,
    TrustBundle,
    TrustDomain,
    check_bundle_update,
)
from meshgate.keys import PrivateKey, generate_key
from sidecar.identity.blocking import BlockingRunner, in_thread
from sidecar.identity.credentials import CredentialError, Credentials, CredentialStore, Revocations
from sidecar.identity.federation import FederationUpdate, apply_federated
from sidecar.identity.rotation import RenewalAction, next_rotation, renewal_action, retry_at
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.state import (
    JoinToken,
    StateDir,
    StateError,
    load_bundle_file,
    read_join_token,
)
from sidecar.identity.stats import Blocked, IdentityStats

__all__ = ["CaClientLike", "ClientFactory", "IssuedLike", "run_ca_identity"]

log = logging.getLogger("sidecar.identity")
_SHA256 = hashes.SHA256()

_TOKEN_CHECK_SECONDS = 1.0  # how often the token file is read while waiting for a token


class IssuedLike(Protocol):
    """What the lifecycle reads from `mesh_ca.client.IssuedSvid`."""

    @property
    def spiffe_id(self) -> SpiffeId: ...
    @property
    def chain(self) -> tuple[x509.Certificate, ...]: ...
    @property
    def bundle(self) -> TrustBundle: ...


@runtime_checkable
class BundleReporter(Protocol):
    """A CA client that can report the bundle a sidecar holds (`mesh_ca.client.CaClient`)."""

    async def report_bundle(
        self, sequence: int, chain: Sequence[x509.Certificate], key: PrivateKey
    ) -> int: ...


class CaClientLike(Protocol):
    """The part of `mesh_ca.client.CaClient` the lifecycle uses; tests pass a fake."""

    async def bootstrap(
        self, token: str, key: PrivateKey, expected: SpiffeId | None = None
    ) -> IssuedLike: ...
    async def renew(
        self, chain: Sequence[x509.Certificate], key: PrivateKey, new_key: PrivateKey
    ) -> IssuedLike: ...
    async def fetch_bundle(self) -> TrustBundle: ...
    async def fetch_federated_bundles(self) -> BundleSet: ...
    async def fetch_revocations(self) -> tuple[frozenset[SpiffeId], frozenset[int]]: ...
    async def aclose(self) -> None: ...


# Called with the current trust bundles (to recognise the CA); again whenever they change.
ClientFactory = Callable[[BundleSet], CaClientLike]


def _default_factory(settings: IdentitySettings, clock: Clock) -> ClientFactory:
    from mesh_ca.client import CaClient

    def make(bundles: BundleSet) -> CaClientLike:
        return CaClient(
            settings.ca_addresses,
            settings.spiffe_id.trust_domain,
            bundles,
            timeout_seconds=settings.ca_timeout_seconds,
            clock=clock,
        )

    return make


async def run_ca_identity(
    settings: IdentitySettings,
    store: CredentialStore,
    clock: Clock,
    *,
    stats: IdentityStats,
    client_factory: ClientFactory | None = None,
    rng: random.Random | None = None,
    run_blocking: BlockingRunner = in_thread,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The CA branch of `sidecar.identity.run.run_identity`: bootstrap or reload, report
    started, then rotate and poll forever."""
    factory = client_factory or _default_factory(settings, clock)
    lifecycle = _Lifecycle(
        settings,
        store,
        clock,
        factory,
        rng or random.Random(),  # noqa: S311 - jitter only spreads sidecars apart
        stats,
        run_blocking,
    )
    try:
        await lifecycle.start()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lifecycle.rotate_forever)
            nursery.start_soon(lifecycle.poll_forever)
    finally:
        with trio.CancelScope(shield=True):
            await lifecycle.aclose()


class _Lifecycle:
    def __init__(
        self,
        settings: IdentitySettings,
        store: CredentialStore,
        clock: Clock,
        factory: ClientFactory,
        rng: random.Random,
        stats: IdentityStats,
        run_blocking: BlockingRunner,
    ) -> None:
        assert settings.state_dir is not None  # checked by IdentitySettings
        self.settings, self.store, self.clock, self.rng, self.stats = (
            settings,
            store,
            clock,
            rng,
            stats,
        )
        self.spiffe_id = settings.spiffe_id
        self.state = StateDir(settings.state_dir)
        self._factory = factory
        self.run_blocking = run_blocking
        self._client: CaClientLike | None = None
        self._client_bundles: BundleSet | None = None
        self.bundles = BundleSet()
        self._persist_lock = trio.Lock()
        self._wake = trio.Event()  # set to renew early (own SVID revoked)
        # The bundle sequence last reported to the CA: reported again when it changes.
        self._reported: int | None = None
        self._expired_at: datetime | None = None  # of the stored SVID, for error messages
        # The CA's refusal of the token now in the token file: still the reason while it is.
        self._refusal: tuple[str, Blocked] | None = None

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the stored SVID or bootstrap one (waiting as long as that takes).
        A state directory or bundle file it cannot use is a `StartupError` naming the key."""
        try:
            await self.run_blocking(self.state.ensure)
        except StateError as exc:
            raise StartupError(
                "identity.state_dir", self.state.path, str(exc), ExitCode.STATE
            ) from exc
        try:
            self.bundles = await self.run_blocking(self._initial_bundles)
        except StateError as exc:
            raise StartupError(
                "identity.bundle_file", self.settings.bundle_file, str(exc), ExitCode.FILE
            ) from exc
        now = self.clock.now()
        stored = await self.run_blocking(self.state.load_svid, self.spiffe_id, self.bundles, now)
        if stored.credentials is not None:
            creds = stored.credentials
            log.info(
                "using stored SVID %s serial %x, valid until %s (no join token needed)",
                creds.spiffe_id,
                creds.serial,
                creds.not_after.isoformat(),
            )
            self.store.publish(creds)
            self.bundles = creds.bundles
            self.stats.count("start", "stored")
            await self._persist()  # proves state_dir still takes a save (readiness says so)
            return
        log.info("stored SVID not usable (%s): bootstrapping with a join token", stored.reason)
        self._expired_at = stored.expired_at
        await self.replace(why="start-up")
        self.stats.count("start", "bootstrapped")

    def _initial_bundles(self) -> BundleSet:
        """The bundle last fetched from the CA if stored, else the configured bundle file."""
        domain = self.spiffe_id.trust_domain
        stored = self.state.load_bundle(domain)
        own = BundleSet.of(
            stored if stored is not None else load_bundle_file(self.settings.bundle_file, domain)
        )
        # The federated trust domains held before a restart, until the CA says otherwise.
        return apply_federated(own, domain, self.state.load_federated(domain)).bundles

    # -- the CA client ---------------------------------------------------------------------

    async def client(self) -> CaClientLike:
        """A client that recognises the CA by the current bundles (a new one when they change)."""
        if self._client is None or self._client_bundles is not self.bundles:
            await self.aclose()
            self._client, self._client_bundles = self._factory(self.bundles), self.bundles
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- rotation ----------------------------------------------------------------------------

    async def rotate_forever(self) -> None:
        while True:
            creds = self.store.current
            assert creds is not None  # published by start()
            at = next_rotation(creds.not_before, creds.not_after, self.rng)
            self.stats.next_rotation_at = at
            log.debug("next rotation of serial %x at %s", creds.serial, at.isoformat())
            woken = await self._sleep_until(at, wake=True)
            await self.replace(why="revoked" if woken else "rotation")

    async def replace(self, *, why: str) -> None:
        """Loop until a new SVID is live: renew while valid, else bootstrap with a fresh token."""
        attempt, renew_refused = 0, why == "revoked"
        while True:
            now = self.clock.now()
            current = self.store.current
            not_after = current.not_after if current is not None else now
            token = self._fresh_token()
            action = renewal_action(
                now, not_after, token_available=token is not None, renew_refused=renew_refused
            )
            kind = "rotation" if action is RenewalAction.RENEW else "bootstrap"
            try:
                if action is RenewalAction.RENEW and current is not None:
                    creds = await self._renew(current)
                elif action is RenewalAction.BOOTSTRAP and token is not None:
                    creds = await self._bootstrap(token)
                else:
                    self._report_waiting_for_token(now, current)
                    creds = None
            except CaUnavailable as exc:
                left = f"current SVID valid until {not_after.isoformat()}"
                if now >= not_after:
                    left = f"SVID expired at {not_after.isoformat()}: mTLS refused until renewed"
                log.warning("%s: CA unavailable (%s); %s; retrying", kind, exc, left)
                self.stats.error(kind, "ca_unavailable", str(exc), now)
                self.stats.blocked = Blocked("ca_unreachable", f"CA unreachable: {exc}")
                creds = None
            except CaClientError as exc:
                self._report_refusal(action, token, exc, now)
                renew_refused = renew_refused or action is RenewalAction.RENEW
                creds = None
            except CredentialError as exc:
                log.error(
                    "%s: the CA's answer was refused, keeping the current SVID: %s", kind, exc
                )
                self.stats.error(kind, "invalid", str(exc), now)
                self.stats.blocked = Blocked("svid_invalid", f"the CA's answer was refused: {exc}")
                creds = None
            if creds is not None:
                self.store.publish(creds)
                self.stats.ok(kind)
                self.stats.blocked = None
                self.stats.last_rotation_at = now
                self._expired_at = None
                log.info(
                    "%s: SVID %s serial %x live, valid until %s (%s)",
                    kind,
                    creds.spiffe_id,
                    creds.serial,
                    creds.not_after.isoformat(),
                    why,
                )
                await self._persist()
                return
            at = retry_at(
                now,
                not_after,
                attempt,
                self.rng,
                base=timedelta(seconds=self.settings.backoff_base_seconds),
                cap=timedelta(seconds=self.settings.backoff_cap_seconds),
            )
            if action is RenewalAction.WAIT_FOR_TOKEN:
                await self._sleep_until_token(at)
            else:
                await self._sleep_until(at)
            attempt += 1

    async def _renew(self, current: Credentials) -> Credentials:
        new_key = generate_key()
        issued = await (await self.client()).renew(current.chain, current.key, new_key)
        return self._build(issued, new_key)

    async def _bootstrap(self, token: JoinToken) -> Credentials:
        key = generate_key()
        log.info("bootstrap: sending a CSR with join token %s to the CA", token.public_id)
        try:
            issued = await (await self.client()).bootstrap(token.text, key, self.spiffe_id)
        except CaClientError as exc:
            # Refused: sending it again cannot help. A token for another ID is not spent at
            # the CA, so it is only skipped in this process (`_refusal`), not recorded: after
            # identity.spiffe_id is corrected and the sidecar restarted, it is used.
            if not isinstance(exc, CaUnavailable) and exc.code != "token_wrong_id":
                await self._mark_spent(token)
            raise
        await self._mark_spent(token)  # consumed by the CA, whatever happens next
        return self._build(issued, key)

    def _build(self, issued: IssuedLike, key: PrivateKey) -> Credentials:
        """Validate the CA's answer for this sidecar's ID and build it; fails closed."""
        if issued.spiffe_id != self.spiffe_id:
            raise CredentialError(
                f"CA issued {issued.spiffe_id}, but this sidecar is {self.spiffe_id}"
            )
        known = self.bundles.get(issued.bundle.trust_domain)
        # The SVID response carries roots only (no spiffe_sequence): keep the known bundle,
        # and with it the sequence that rollbacks are checked against, when roots agree.
        same = known is not None and {r.fingerprint(_SHA256) for r in known.roots} == {
            r.fingerprint(_SHA256) for r in issued.bundle.roots
        }
        bundles = self.bundles if same else self.bundles.with_bundle(issued.bundle)
        creds = Credentials.build(
            issued.chain, key, bundles, self.clock.now(), expected_id=self.spiffe_id
        )
        # With the intermediates of our own chain learned (`Credentials.build`): the CA's
        # published ones are compared against these, so an unchanged set is no change.
        self.bundles = creds.bundles
        return creds

    # -- tokens ------------------------------------------------------------------------------

    def _fresh_token(self) -> JoinToken | None:
        try:
            token = read_join_token(self.settings.token_file)
            if token is None or not self._unused(token):
                return None
        except StateError as exc:
            log.error("join token: %s", exc)
            return None
        return token

    def _unused(self, token: JoinToken) -> bool:
        """Not yet sent (on disk), and not the token the CA just refused (in memory)."""
        refused = self._refusal is not None and self._refusal[0] == token.digest
        return not refused and not self.state.token_spent(token)

    async def _sleep_until_token(self, at: datetime) -> None:
        """Sleep until `at`, or only until a fresh join token is in the token file.

        After expiry the backoff reaches its cap (a minute by default); an operator who
        writes a token should not wait that long, so the file is looked at every second.
        """
        while (left := (at - self.clock.now()).total_seconds()) > 0:
            await trio.sleep(min(left, _TOKEN_CHECK_SECONDS))
            try:
                token = read_join_token(self.settings.token_file)
                if token is not None and self._unused(token):
                    return
            except StateError:
                pass  # the next attempt reports it (once per attempt, not every second)

    async def _mark_spent(self, token: JoinToken) -> None:
        try:
            await self.run_blocking(self.state.mark_token_spent, token)
        except (OSError, StateError) as exc:
            log.error("cannot record that join token %s was used: %s", token.public_id, exc)

    def _report_waiting_for_token(self, now: datetime, current: Credentials | None) -> None:
        expired_at = current.not_after if current is not None else self._expired_at
        why = (
            f"the SVID expired at {expired_at.isoformat()}"
            if expired_at is not None
            else "there is no usable SVID"
        )
        path = self.settings.token_file
        if path is None:
            hint = "and no token_file is configured"
        else:
            try:
                token = read_join_token(path)
            except StateError as exc:
                token, hint = None, f"and the token file is unreadable ({exc})"
            else:
                hint = f"and there is no join token in {path}"
            if token is not None and self._refusal and self._refusal[0] == token.digest:
                self.stats.blocked = self._refusal[1]  # the CA's reason, not "already used"
                log.error("cannot get an SVID: %s", self._refusal[1].message)
                return
            if token is not None:
                hint = (
                    f"and the join token in {path} (id {token.public_id}) was already used; "
                    "join tokens are one-time"
                )
        message = (
            f"cannot get an SVID: {why} (the CA renews only valid SVIDs) {hint}. "
            f"Write a fresh token from `mesh-ca token create` for {self.spiffe_id} to "
            f"{path or 'the configured token_file'}; retrying until then"
        )
        log.error("%s", message)
        self.stats.error("bootstrap", "no_token", message, now)
        self.stats.blocked = Blocked("waiting_for_token", message)

    def _report_refusal(
        self, action: RenewalAction, token: JoinToken | None, exc: CaClientError, now: datetime
    ) -> None:
        if action is RenewalAction.BOOTSTRAP and token is not None and exc.code == "token_wrong_id":
            message = (
                f"the join token in {self.settings.token_file} (id {token.public_id}) is for "
                f"another SPIFFE ID, not this sidecar's identity.spiffe_id {self.spiffe_id}: "
                f"{exc}. The CA kept the token for the ID it names; write a token created "
                f"for {self.spiffe_id} to {self.settings.token_file}"
            )
            log.error("bootstrap: %s", message)
            self.stats.error("bootstrap", "wrong_id", message, now)
            self.stats.blocked = Blocked("token_wrong_id", message)
            self._refusal = (token.digest, self.stats.blocked)
        elif action is RenewalAction.BOOTSTRAP and token is not None:
            log.error(
                "bootstrap: the CA refused join token %s (%s %s: %s); it will not be sent again: "
                "write a fresh token to %s",
                token.public_id,
                exc.status,
                exc.code,
                exc,
                self.settings.token_file,
            )
            self.stats.error("bootstrap", "refused", str(exc), now)
            self.stats.blocked = Blocked(
                "token_refused",
                f"the CA refused the join token in {self.settings.token_file} "
                f"(id {token.public_id}): {exc}; write a fresh token there",
            )
            self._refusal = (token.digest, self.stats.blocked)
        else:
            log.error(
                "rotation: the CA refused to renew (%s %s: %s); retrying, and bootstrapping "
                "instead if a fresh join token appears",
                exc.status,
                exc.code,
                exc,
            )
            self.stats.error("rotation", "refused", str(exc), now)

    # -- bundle and revocations ------------------------------------------------------------

    async def poll_forever(self) -> None:
        await self.poll_federation()  # at once: foreign peers are refused until it is in
        while True:
            await trio.sleep(self.settings.poll_interval_seconds)
            await self.poll_once()

    async def poll_once(self) -> None:
        client = await self.client()
        now = self.clock.now()
        try:
            bundle_changed = self._apply_bundle(await client.fetch_bundle(), now)
            spiffe_ids, serials = await client.fetch_revocations()
        except CaUnavailable as exc:
            log.info("poll: CA unavailable (%s); keeping the current bundle and revocations", exc)
            self.stats.error("poll", "ca_unavailable", str(exc), now)
            return
        except CaClientError as exc:
            log.warning("poll: the CA refused (%s %s: %s)", exc.status, exc.code, exc)
            self.stats.error("poll", "refused", str(exc), now)
            return
        self.stats.ok("poll")
        self._apply_revocations(
            Revocations(spiffe_ids, serials, self.store.revocations.untrusted_domains), now
        )
        if bundle_changed:
            await self._persist()
        await self._report_bundle(client, now)
        await self.poll_federation()

    async def _report_bundle(self, client: CaClientLike, now: datetime) -> None:
        """Tell the CA the bundle sequence this sidecar holds (once per change), so an
        operator's `mesh-ca root activate` knows every sidecar trusts the new root."""
        bundle = self.bundles.get(self.spiffe_id.trust_domain)
        creds = self.store.usable(now)
        if (
            not isinstance(client, BundleReporter)
            or bundle is None
            or bundle.sequence is None
            or creds is None
            or bundle.sequence == self._reported
        ):
            return
        try:
            await client.report_bundle(bundle.sequence, creds.chain, creds.key)
        except CaClientError as exc:  # an older CA without the endpoint, or a refusal
            log.info("poll: bundle sequence not reported (%s)", exc)
            self.stats.error("report", "refused", str(exc), now)
            return
        self._reported = bundle.sequence

    async def poll_federation(self) -> None:
        """Take the federated trust domains' bundles from the CA (`sidecar.identity.federation`).
        Unreachable CA: keep what is held; a refused answer: keep it too, and say so."""
        client = await self.client()
        try:
            federated = await client.fetch_federated_bundles()
        except CaClientError as exc:
            kind = "ca_unavailable" if isinstance(exc, CaUnavailable) else "refused"
            log.warning("poll: federated bundles not updated (%s); keeping the held ones", exc)
            self.stats.error("federation", kind, str(exc), self.clock.now())
            return
        if self._publish_bundles(
            apply_federated(self.bundles, self.spiffe_id.trust_domain, federated),
            self.clock.now(),
        ):
            await self._persist()

    def _publish_bundles(self, update: FederationUpdate, now: datetime) -> bool:
        """Rebuild the credentials with `update.bundles` when trust changed (validate, then
        publish: open connections whose peer lost its trust domain are cut by the tracker).
        True if it did."""
        if not update.changed:
            return False
        current = self.store.current
        if current is not None:
            try:
                creds = Credentials.build(
                    current.chain, current.key, update.bundles, now, expected_id=self.spiffe_id
                )
            except CredentialError as exc:
                log.error("poll: federated bundles refused, keeping the old ones: %s", exc)
                self.stats.error("federation", "invalid", str(exc), now)
                return False
            self.store.publish(creds)
        self.bundles = update.bundles
        self.stats.ok("federation", "updated")
        log.info("poll: federation: %s", update.describe())
        return True

    def _apply_bundle(self, bundle: TrustBundle, now: datetime) -> bool:
        """Publish credentials rebuilt with a changed bundle; False if unchanged or refused.

        Per the SPIFFE bundle spec: a bundle with no X.509 authority makes its trust domain
        untrusted (every SVID of it refused, open connections cut) rather than keeping the
        previous roots; a spiffe_sequence that goes back is refused (the old bundle stays).
        """
        domain = self.spiffe_id.trust_domain
        if bundle.trust_domain != domain:
            log.warning(
                "poll: CA sent a bundle for %s, not %s: ignored", bundle.trust_domain, domain
            )
            self.stats.error("bundle", "invalid", f"bundle for {bundle.trust_domain}", now)
            return False
        known = self.bundles.get(domain)
        try:
            changed = check_bundle_update(known, bundle)
        except BundleError as exc:
            log.error("poll: trust bundle refused, keeping the old one: %s", exc)
            self.stats.error("bundle", "rollback", str(exc), now)
            return False
        revocations = self.store.revocations
        if bundle.untrusted:
            if domain not in revocations.untrusted_domains:
                message = f"the CA's bundle for {domain} has no X.509 authority"
                log.error("poll: %s: every SVID of %s is refused until it has one", message, domain)
                self.stats.error("bundle", "untrusted", message, now)
                self._set_untrusted(revocations.untrusted_domains | {domain})
            return False
        if domain in revocations.untrusted_domains:
            log.info("poll: the CA's bundle for %s has authorities again", domain)
            self._set_untrusted(revocations.untrusted_domains - {domain})
        if not changed:
            if (
                known is not None
                and bundle.sequence is not None
                and known.sequence != bundle.sequence
            ):
                # Same roots, a newer sequence: remember it (rollbacks are checked against
                # it); trust is unchanged, so nothing is rebuilt or republished.
                self.bundles = self.bundles.with_bundle(
                    TrustBundle(
                        domain,
                        known.roots,
                        known.intermediates,
                        bundle.sequence,
                        bundle.refresh_hint_seconds,
                    )
                )
            return False
        current = self.store.current
        bundles = self.bundles.with_bundle(bundle)
        if current is not None:
            try:
                creds = Credentials.build(
                    current.chain, current.key, bundles, now, expected_id=self.spiffe_id
                )
            except CredentialError as exc:
                log.error("poll: new trust bundle refused, keeping the old one: %s", exc)
                self.stats.error("bundle", "invalid", str(exc), now)
                return False
            self.store.publish(creds)
            bundles = creds.bundles  # with our own chain's intermediates, as published
        self.bundles = bundles
        self.stats.ok("bundle", "updated")
        log.info("poll: trust bundle for %s updated (%d roots)", domain, len(bundle.roots))
        return True

    def _set_untrusted(self, domains: frozenset[TrustDomain]) -> None:
        current = self.store.revocations
        self.store.publish_revocations(Revocations(current.spiffe_ids, current.serials, domains))

    def _apply_revocations(self, revocations: Revocations, now: datetime) -> None:
        if revocations == self.store.revocations:
            return
        self.store.publish_revocations(revocations)
        self.stats.count("revocations", "updated")
        log.info(
            "poll: revocations updated (%d SPIFFE IDs, %d serials)",
            len(revocations.spiffe_ids),
            len(revocations.serials),
        )
        current = self.store.current
        if current is not None and revocations.refuses(current.spiffe_id, current.serial):
            message = f"this sidecar's own SVID (serial {current.serial:x}) is revoked"
            log.error("%s: replacing it now", message)
            self.stats.error("revocations", "own_svid_revoked", message, now)
            self._wake.set()

    # -- helpers -----------------------------------------------------------------------------

    async def _persist(self) -> None:
        """Write the credentials that are live now (the newest) to the state directory."""
        async with self._persist_lock:
            creds = self.store.current
            if creds is None:
                return
            try:
                await self.run_blocking(self.state.save, creds)
            except (OSError, StateError) as exc:
                # Serving goes on, but unready: a restart now would need a new join token.
                message = f"cannot save the SVID to identity.state_dir {self.state.path}: {exc}"
                log.error("%s", message)
                self.stats.error("persist", "failed", message, self.clock.now())
                self.stats.persist_error = message
                return
            if self.stats.persist_error is not None:
                log.info("SVID saved to %s again", self.state.path)
            self.stats.persist_error = None
            self.stats.ok("persist")

    async def _sleep_until(self, at: datetime, *, wake: bool = False) -> bool:
        """Sleep until wall time `at`; with `wake`, return True early if woken."""
        seconds = max(0.0, (at - self.clock.now()).total_seconds())
        if not wake:
            await trio.sleep(seconds)
            return False
        with trio.move_on_after(seconds):
            await self._wake.wait()
            self._wake = trio.Event()
            return True
        return False
