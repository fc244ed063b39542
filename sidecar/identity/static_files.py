"""Static-file identity: an SVID, key and bundle from files that something else rotates.

For deployments where cert-manager, SPIRE's helper, an operator or the `sidecar.workers`
parent writes ``cert_file``, ``key_file`` and ``bundle_file``. Like ghostunnel: the files
are read at start, then again when a file's modification time, size or inode changes
(checked every ``reload_interval_seconds``) and at once on a `ReloadSignal` (the caller
wires SIGHUP to it). The new set is validated before it replaces the old one; on any error
(a bad or half-written file) the error is logged and counted and the old credentials keep
serving until they expire: then `usable(now)` is None and mTLS is refused both ways
(fails closed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import final

import trio
from cryptography import x509

from meshgate.clock import Clock
from meshgate.identity import BundleError, BundleSet, TrustBundle, load_pem_certificates
from meshgate.keys import KeyFileError, load_private_key
from sidecar.identity.blocking import BlockingRunner, in_thread
from sidecar.identity.credentials import CredentialError, Credentials, CredentialStore
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.stats import IdentityStats

__all__ = [
    "FileStamp",
    "ReloadSignal",
    "StaticIdentityError",
    "file_stamp",
    "load_static_credentials",
    "run_static_identity",
]

log = logging.getLogger("sidecar.identity")

FileStamp = tuple[tuple[int, int, int] | None, ...]


class StaticIdentityError(CredentialError):
    """The identity files are unreadable or do not form a valid SVID; names the file."""


@final
class ReloadSignal:
    """Set by SIGHUP (or any caller); the reload loop waits on it or on its timer."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def request(self) -> None:
        self._event.set()

    async def wait(self, timeout_seconds: float) -> bool:
        """Wait for a request or the timeout; True if a request came."""
        with trio.move_on_after(timeout_seconds):
            await self._event.wait()
        requested = self._event.is_set()
        self._event = trio.Event()
        return requested


def _files(settings: IdentitySettings) -> tuple[Path, Path, Path]:
    if settings.cert_file is None or settings.key_file is None:
        raise StaticIdentityError("[identity] has no cert_file/key_file (not static mode)")
    return settings.cert_file, settings.key_file, settings.bundle_file


def file_stamp(paths: Sequence[Path]) -> FileStamp:
    """What changes when a file is rewritten or replaced (None for a missing file)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StaticIdentityError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    try:
        return load_pem_certificates(data, what=str(path))
    except BundleError as exc:
        raise StaticIdentityError(str(exc)) from exc


def load_static_credentials(settings: IdentitySettings, now: datetime) -> Credentials:
    """Read and validate the three files; fails closed with `StaticIdentityError`, which
    names the file that is wrong."""
    cert_file, key_file, bundle_file = _files(settings)
    chain = _certificates(cert_file, "cert_file")
    anchors = _certificates(bundle_file, "bundle_file")
    try:
        key = load_private_key(key_file)
    except KeyFileError as exc:
        raise StaticIdentityError(str(exc)) from exc
    # Only self-signed certificates are trust anchors; an intermediate in either file only
    # helps peer checks build a path from a peer's bare leaf (Python 3.11).
    roots = tuple(c for c in anchors if c.subject == c.issuer)
    if not roots:
        raise StaticIdentityError(f"{bundle_file}: holds no self-signed root")
    intermediates = tuple(dict.fromkeys(c for c in (*chain[1:], *anchors) if c.subject != c.issuer))
    domain = settings.spiffe_id.trust_domain
    bundles = BundleSet.of(TrustBundle(domain, roots, intermediates))
    try:
        return Credentials.build(tuple(chain), key, bundles, now, expected_id=settings.spiffe_id)
    except CredentialError as exc:
        raise StaticIdentityError(f"{cert_file}: {exc}") from exc


async def run_static_identity(
    settings: IdentitySettings,
    store: CredentialStore,
    clock: Clock,
    *,
    stats: IdentityStats,
    reload: ReloadSignal | None = None,
    run_blocking: BlockingRunner = in_thread,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load the files (an error at start-up is raised: the sidecar must not start without
    an identity), publish, report started, then reload on change or `reload` request.

    A reload that yields the same SVID and bundle publishes nothing, so subscribers (TLS
    contexts, the workers' parent) only hear of real changes.
    """
    run = run_blocking
    reload = reload if reload is not None else ReloadSignal()
    paths = _files(settings)
    stamp = file_stamp(paths)
    creds = await run(load_static_credentials, settings, clock.now())
    store.publish(creds)
    stats.ok("reload")
    log.info("static SVID %s serial %x loaded from %s", creds.spiffe_id, creds.serial, paths[0])
    task_status.started()
    while True:
        requested = await reload.wait(settings.poll_interval_seconds)
        now_stamp = await run(file_stamp, paths)
        if not requested and now_stamp == stamp:
            continue
        stamp = now_stamp
        now = clock.now()
        try:
            fresh = await run(load_static_credentials, settings, now)
        except StaticIdentityError as exc:
            log.error("static SVID reload refused, keeping the current one: %s", exc)
            stats.error("reload", "invalid", str(exc), now)
            continue
        stats.ok("reload")
        if fresh.serial == creds.serial and fresh.bundles == creds.bundles:
            continue
        creds = fresh
        store.publish(creds)
        log.info(
            "static SVID reloaded: serial %x valid until %s",
            creds.serial,
            creds.not_after.isoformat(),
        )
