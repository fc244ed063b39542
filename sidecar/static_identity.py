"""Static identity files (``cert_file``/``key_file``/``bundle_file``), reloaded on change.

Like ghostunnel: the files are read at start, then again on SIGHUP or when a file's
mtime changes (checked every ``reload_interval_seconds``). Validate, then publish: a bad
or half-written file is logged and the previous credentials keep serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import final

import trio

from mesh_ca.identity import BundleError, BundleSet, TrustBundle, load_pem_certificates
from mesh_ca.keys import KeyFileError, load_private_key
from sidecar.config import IdentityConfig
from sidecar.identity.credentials import CredentialError, Credentials, CredentialStore
from sidecar.logs import event

__all__ = ["ReloadSignal", "StaticIdentityError", "load_static_credentials", "run_static_identity"]

log = logging.getLogger("sidecar.identity.static")


class StaticIdentityError(ValueError):
    """The identity files are unreadable or do not form a valid SVID; names the file."""


@final
class ReloadSignal:
    """Set by SIGHUP; the reload loop waits on it or on its timer."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def request(self) -> None:
        self._event.set()

    async def wait(self, timeout_seconds: float) -> None:
        with trio.move_on_after(timeout_seconds):
            await self._event.wait()
        self._event = trio.Event()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StaticIdentityError(f"{path}: cannot read {what} ({exc.strerror})") from exc


def load_static_credentials(identity: IdentityConfig, now: datetime) -> Credentials:
    """Read the three files and build credentials; fails closed with `StaticIdentityError`."""
    if identity.cert_file is None or identity.key_file is None:
        raise StaticIdentityError("[identity] has no cert_file/key_file (not static mode)")
    try:
        chain = load_pem_certificates(
            _read(identity.cert_file, "cert_file"), what=str(identity.cert_file)
        )
        anchors = load_pem_certificates(
            _read(identity.bundle_file, "bundle_file"), what=str(identity.bundle_file)
        )
        key = load_private_key(identity.key_file)
    except (BundleError, KeyFileError) as exc:
        raise StaticIdentityError(str(exc)) from exc
    roots = tuple(c for c in anchors if c.subject == c.issuer)
    if not roots:
        raise StaticIdentityError(f"{identity.bundle_file}: holds no self-signed root")
    # Intermediates let peer checks build a path from a peer's bare leaf (Python 3.11).
    intermediates = tuple(c for c in (*chain[1:], *anchors) if c.subject != c.issuer)
    bundles = BundleSet.of(TrustBundle(identity.trust_domain, roots, intermediates))
    try:
        return Credentials.build(tuple(chain), key, bundles, now, expected_id=identity.spiffe_id)
    except CredentialError as exc:
        raise StaticIdentityError(f"{identity.cert_file}: {exc}") from exc


def _mtimes(identity: IdentityConfig) -> tuple[float, ...]:
    paths = (identity.cert_file, identity.key_file, identity.bundle_file)
    out: list[float] = []
    for path in paths:
        try:
            out.append(path.stat().st_mtime if path is not None else 0.0)
        except OSError:
            out.append(-1.0)
    return tuple(out)


async def run_static_identity(
    identity: IdentityConfig,
    store: CredentialStore,
    now: Callable[[], datetime],
    reload: ReloadSignal,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load once (raising `StaticIdentityError` on failure), then reload on change."""
    credentials = load_static_credentials(identity, now())
    store.publish(credentials)
    event(
        log,
        "identity loaded",
        spiffe_id=str(credentials.spiffe_id),
        serial=f"{credentials.serial:x}",
        not_after=credentials.not_after.isoformat(),
    )
    seen = _mtimes(identity)
    task_status.started()
    while True:
        await reload.wait(identity.reload_interval_seconds)
        current = _mtimes(identity)
        if current == seen and store.current is credentials:
            continue
        seen = current
        try:
            fresh = load_static_credentials(identity, now())
        except StaticIdentityError as exc:
            event(
                log,
                "identity reload failed; keeping the current SVID",
                level=logging.ERROR,
                error=str(exc),
            )
            continue
        if fresh.serial != credentials.serial or fresh.bundles != credentials.bundles:
            credentials = fresh
            store.publish(fresh)
            event(
                log,
                "identity reloaded",
                spiffe_id=str(fresh.spiffe_id),
                serial=f"{fresh.serial:x}",
                not_after=fresh.not_after.isoformat(),
            )
