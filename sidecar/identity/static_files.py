"""Static-file identity: an SVID, key and bundle from files that something else rotates.

For deployments where cert-manager, SPIRE's helper or an operator writes the files. The
files are re-read when their modification time, size or inode changes (checked every poll
interval) and on SIGHUP; the new set is validated before it replaces the old one, and on
any error the old credentials keep serving (until they expire: then `usable(now)` is None
and mTLS is refused both ways, fails closed).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import trio

from mesh_ca.clock import Clock
from mesh_ca.identity import BundleError, BundleSet, load_pem_certificates
from mesh_ca.keys import KeyFileError, load_private_key
from sidecar.identity.blocking import BlockingRunner, in_thread
from sidecar.identity.credentials import CredentialError, Credentials, CredentialStore
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.state import StateError, load_bundle_file
from sidecar.identity.stats import IdentityStats

__all__ = ["FileStamp", "file_stamp", "load_static_credentials", "run_static_identity"]

log = logging.getLogger("sidecar.identity")

FileStamp = tuple[tuple[int, int, int] | None, ...]


def _files(settings: IdentitySettings) -> tuple[Path, Path, Path]:
    assert settings.cert_file is not None
    assert settings.key_file is not None
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


def load_static_credentials(settings: IdentitySettings, now: datetime) -> Credentials:
    """Read and validate the three files; `CredentialError` names the file that is wrong."""
    cert_file, key_file, bundle_file = _files(settings)
    try:
        chain = tuple(load_pem_certificates(cert_file.read_bytes(), what=str(cert_file)))
    except OSError as exc:
        raise CredentialError(f"{cert_file}: cannot read certificate ({exc.strerror})") from exc
    except BundleError as exc:
        raise CredentialError(str(exc)) from exc
    try:
        key = load_private_key(key_file)
        bundle = load_bundle_file(bundle_file, settings.spiffe_id.trust_domain)
    except (KeyFileError, StateError) as exc:
        raise CredentialError(str(exc)) from exc
    try:
        return Credentials.build(
            chain, key, BundleSet.of(bundle), now, expected_id=settings.spiffe_id
        )
    except CredentialError as exc:
        raise CredentialError(f"{cert_file}: {exc}") from exc


async def run_static_identity(
    settings: IdentitySettings,
    store: CredentialStore,
    clock: Clock,
    *,
    stats: IdentityStats,
    run_blocking: BlockingRunner = in_thread,
    reload_signals: Sequence[signal.Signals] = (signal.SIGHUP,),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load the files (an error at start-up is raised: the sidecar must not start without
    an identity), publish, report started, then reload on change or signal."""
    run = run_blocking
    paths = _files(settings)
    stamp = file_stamp(paths)
    creds = await run(load_static_credentials, settings, clock.now())
    store.publish(creds)
    stats.count("reload", "ok")
    log.info("static SVID %s serial %x loaded from %s", creds.spiffe_id, creds.serial, paths[0])
    task_status.started()
    wake = trio.Event()

    async def on_signals() -> None:
        nonlocal wake
        with trio.open_signal_receiver(*reload_signals) as received:
            async for signum in received:
                log.info("static SVID: reloading on %s", signal.Signals(signum).name)
                wake.set()

    async with trio.open_nursery() as nursery:
        if reload_signals:
            nursery.start_soon(on_signals)
        while True:
            signalled = False
            with trio.move_on_after(settings.poll_interval_seconds):
                await wake.wait()
                signalled = True
            wake = trio.Event()
            now_stamp = await run(file_stamp, paths)
            if not signalled and now_stamp == stamp:
                continue
            stamp = now_stamp
            now = clock.now()
            try:
                creds = await run(load_static_credentials, settings, now)
            except CredentialError as exc:
                log.error("static SVID reload refused, keeping the current one: %s", exc)
                stats.error("reload", "invalid", str(exc), now)
                continue
            store.publish(creds)
            stats.count("reload", "ok")
            log.info(
                "static SVID reloaded: serial %x valid until %s",
                creds.serial,
                creds.not_after.isoformat(),
            )
