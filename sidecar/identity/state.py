"""The sidecar's identity state on disk: the SVID, its key, the trust bundle, and spent tokens.

``state_dir`` holds ``svid.pem`` (leaf first, then intermediates), ``svid.key`` (mode 0600
from the first byte), ``bundle.pem`` (the roots of this sidecar's trust domain as last
fetched from the CA) and ``token.used`` (the SHA-256 of the last join token that was spent,
so a one-time token is never sent twice). Every file is written atomically (temporary file,
fsync, rename); the key and the certificate are written together before either is renamed
into place, so a failed write keeps the old pair. A crash between the two renames leaves a
pair that does not match, which `load_svid` detects and ignores.

A stored SVID is only used if it is still valid, for this sidecar's SPIFFE ID, matches its
key and chains to the trust bundle; otherwise it is ignored with a log line and the sidecar
needs a join token. Synchronous file I/O: trio callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, final

from mesh_ca.tokens import TokenFormatError, parse_token
from meshgate.errors import IdentityError
from meshgate.files import write_atomic, write_atomic_set
from meshgate.identity import (
    BundleError,
    BundleSet,
    SpiffeId,
    TrustBundle,
    TrustDomain,
    load_pem_certificates,
    pem_bundle,
)
from meshgate.identity.federation import (
    FederationError,
    federated_bundles_document,
    parse_federated_bundles,
)
from meshgate.keys import KeyFileError, load_private_key, private_key_pem, write_private_file
from sidecar.identity.credentials import CredentialError, Credentials

__all__ = [
    "BUNDLE_FILE",
    "KEY_FILE",
    "SVID_FILE",
    "TOKEN_USED_FILE",
    "JoinToken",
    "StateDir",
    "StateError",
    "StoredSvid",
    "load_bundle_file",
    "read_join_token",
    "write_public_file",
]

SVID_FILE: Final = "svid.pem"
KEY_FILE: Final = "svid.key"
BUNDLE_FILE: Final = "bundle.pem"
# The federated trust domains' bundles, as the CA serves them (`meshgate.identity.federation`).
FEDERATED_FILE: Final = "federated-bundles.json"
TOKEN_USED_FILE: Final = "token.used"  # noqa: S105 - a file name, holds only a hash

log = logging.getLogger("sidecar.identity")


class StateError(IdentityError):
    """The state directory or the token file cannot be used; the message names the path."""


def write_public_file(path: Path, data: bytes) -> None:
    """Write a non-secret file (mode 0644) atomically: temporary file, fsync, rename."""
    write_atomic(path, data, 0o644)


def load_bundle_file(path: Path, trust_domain: TrustDomain) -> TrustBundle:
    """The roots in a PEM file as `trust_domain`'s bundle; `StateError` names the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path}: cannot read trust bundle ({exc.strerror})") from exc
    try:
        roots = load_pem_certificates(data, what=str(path))
    except BundleError as exc:
        raise StateError(str(exc)) from exc
    return TrustBundle(trust_domain, tuple(roots))


@final
@dataclass(frozen=True)
class JoinToken:
    """A join token read from its file. `repr` and `str` never show the secret."""

    path: Path
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def public_id(self) -> str:
        """The token's public id, safe to log ("?" if the file does not hold a token)."""
        try:
            token_id, _ = parse_token(self.text)
        except TokenFormatError:
            return "?"
        return token_id

    def __repr__(self) -> str:
        return f"JoinToken(path={self.path!s}, id={self.public_id})"

    __str__ = __repr__


def read_join_token(path: Path | None) -> JoinToken | None:
    """The token in `path`, or None if there is no path, no file or an empty file."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot read join token file ({exc})") from exc
    return JoinToken(path, text) if text else None


@final
@dataclass(frozen=True)
class StoredSvid:
    """What `load_svid` found: usable credentials, or why there are none."""

    credentials: Credentials | None
    reason: str  # why it was ignored ("" when usable); for logs and error messages
    expired_at: datetime | None = None  # set when the stored SVID is only out of date


@final
class StateDir:
    """The files of one sidecar's identity state, in `path` (created 0700 if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def svid_path(self) -> Path:
        return self.path / SVID_FILE

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def bundle_path(self) -> Path:
        return self.path / BUNDLE_FILE

    @property
    def token_used_path(self) -> Path:
        return self.path / TOKEN_USED_FILE

    def ensure(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"{self.path}: cannot create state directory ({exc.strerror})"
            ) from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateError(f"{self.path}: state directory is not writable")

    def load_bundle(self, trust_domain: TrustDomain) -> TrustBundle | None:
        """The bundle last fetched from the CA, or None (logged) if absent or unreadable."""
        if not self.bundle_path.exists():
            return None
        try:
            return load_bundle_file(self.bundle_path, trust_domain)
        except StateError as exc:
            log.warning("ignoring stored trust bundle: %s", exc)
            return None

    def load_federated(self, local: TrustDomain) -> BundleSet:
        """The federated bundles last taken from the CA (empty, logged, if unreadable): a
        restart while the CA is down keeps trusting what it trusted, as for its own bundle."""
        path = self.path / FEDERATED_FILE
        try:
            return parse_federated_bundles(path.read_bytes(), local)
        except FileNotFoundError:
            return BundleSet()
        except (OSError, FederationError) as exc:
            log.warning("ignoring stored federated bundles: %s", exc)
            return BundleSet()

    def load_svid(self, expected_id: SpiffeId, bundles: BundleSet, now: datetime) -> StoredSvid:
        """The stored SVID as live credentials, if valid now for `expected_id`; else why not."""
        if not self.svid_path.exists() and not self.key_path.exists():
            return StoredSvid(None, f"no SVID in {self.path}")
        try:
            chain = tuple(
                load_pem_certificates(self.svid_path.read_bytes(), what=str(self.svid_path))
            )
            key = load_private_key(self.key_path)
        except (OSError, BundleError, KeyFileError) as exc:
            return StoredSvid(None, f"stored SVID unreadable: {exc}")
        mode = self.key_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s has mode %o: it should be 0600", self.key_path, mode)
        leaf = chain[0]
        if now >= leaf.not_valid_after_utc:
            return StoredSvid(
                None,
                f"stored SVID in {self.svid_path} expired at {leaf.not_valid_after_utc}",
                expired_at=leaf.not_valid_after_utc,
            )
        try:
            creds = Credentials.build(chain, key, bundles, now, expected_id=expected_id)
        except CredentialError as exc:
            return StoredSvid(None, f"stored SVID in {self.svid_path} refused: {exc}")
        return StoredSvid(creds, "")

    def save(self, credentials: Credentials) -> None:
        """Persist the SVID, its key and its trust domain's roots, each file atomically."""
        self.ensure()
        local = credentials.spiffe_id.trust_domain
        bundle = credentials.bundles.get(local)
        if bundle is not None:
            write_public_file(self.bundle_path, bundle.roots_pem())
        foreign = [b for td, b in credentials.bundles.items() if td != local]
        federated = self.path / FEDERATED_FILE
        if foreign:
            document = json.dumps(federated_bundles_document(foreign), indent=1) + "\n"
            write_public_file(federated, document.encode())
        else:
            federated.unlink(missing_ok=True)  # a removed federation stays removed
        # The key and the certificate as one set: both are written before either replaces
        # the stored pair, so a failed write (a full disk) keeps the old, matching pair.
        write_atomic_set(
            [
                (self.key_path, private_key_pem(credentials.key), 0o600),
                (self.svid_path, pem_bundle(credentials.chain), 0o644),
            ]
        )

    def save_bundle(self, bundle: TrustBundle) -> None:
        self.ensure()
        write_public_file(self.bundle_path, bundle.roots_pem())

    def token_spent(self, token: JoinToken) -> bool:
        """Whether this exact token was already sent to the CA (successfully or refused)."""
        try:
            recorded = self.token_used_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.token_used_path}: cannot read ({exc})") from exc
        return recorded == token.digest

    def mark_token_spent(self, token: JoinToken) -> None:
        """Record the token's hash (never the token) so it is not sent again."""
        self.ensure()
        write_private_file(self.token_used_path, f"{token.digest}\n".encode("ascii"))
