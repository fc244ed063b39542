"""The on-disk CA directory: config, root and intermediate, trust bundle and state.

Layout::

    ca.toml               CaConfig
    root.pem  root.key    the root (10 y); key 0600, optionally passphrase-encrypted
    intermediate.pem      the first online signer (rotation.intermediate_ttl_seconds, 30 d, or
                          1 y when not rotated automatically; never past the root)
    intermediate.key      0600, optionally passphrase-encrypted
    bundle.pem            trust anchors (roots) as PEM
    bundle.spiffe.json    the same as a SPIFFE bundle (JWKS)
    state.db              the SQLite state store (tokens, ledger, revocations)

With ``[keys] backend = "pkcs11"`` there are no key files: both keys are made in, and
used from, a PKCS#11 token (`mesh_ca.keystore`).

`init_ca_dir` builds everything in a private temporary directory next to the target and
renames it into place, so a failure never leaves half a CA behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mesh_ca.config import CONFIG_FILE, CaConfig, ConfigError, load_config, write_config
from mesh_ca.issuance import DEFAULT_INTERMEDIATE_TTL, Signer, make_intermediate, make_root
from mesh_ca.keystore import intermediate_signing_key, new_ca_keys
from mesh_ca.store import StateStore, open_store
from meshgate.errors import MeshgateError
from meshgate.identity import (
    BundleError,
    TrustBundle,
    TrustDomain,
    bundle_sequence,
    load_pem_certificates,
)
from meshgate.keys import (
    KeyFileError,
    load_private_key,
    private_key_pem,
    write_private_file,
)

__all__ = [
    "BUNDLE_PEM",
    "BUNDLE_SPIFFE",
    "INTERMEDIATE_CERT",
    "INTERMEDIATE_KEY",
    "PASSPHRASE_ENV",
    "ROOT_CERT",
    "ROOT_KEY",
    "CaDirError",
    "LoadedCa",
    "init_ca_dir",
    "load_ca_dir",
    "read_passphrase",
]

ROOT_CERT: Final = "root.pem"
ROOT_KEY: Final = "root.key"
INTERMEDIATE_CERT: Final = "intermediate.pem"
INTERMEDIATE_KEY: Final = "intermediate.key"
BUNDLE_PEM: Final = "bundle.pem"
BUNDLE_SPIFFE: Final = "bundle.spiffe.json"
PASSPHRASE_ENV: Final = "MESH_CA_PASSPHRASE"  # noqa: S105 - the variable name, not a value
_CA_FILES: Final = (CONFIG_FILE, ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY)


class CaDirError(MeshgateError):
    """The CA directory cannot be created or loaded; the message names the path."""


@final
@dataclass(frozen=True)
class LoadedCa:
    path: Path
    config: CaConfig
    trust_domain: TrustDomain
    root: x509.Certificate
    signer: Signer
    bundle: TrustBundle

    def open_store(self) -> StateStore:
        return open_store(self.config, self.path)


def read_passphrase(
    passphrase_file: Path | None, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The key passphrase from a file (first line) or ``$MESH_CA_PASSPHRASE``; None if neither."""
    if passphrase_file is not None:
        try:
            data = passphrase_file.read_bytes()
        except OSError as exc:
            raise CaDirError(f"{passphrase_file}: cannot read passphrase ({exc.strerror})") from exc
        passphrase = data.splitlines()[0] if data.strip() else b""
        if not passphrase:
            raise CaDirError(f"{passphrase_file}: passphrase file is empty")
        return passphrase
    value = (os.environ if environ is None else environ).get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _existing_ca_files(path: Path) -> list[str]:
    return [name for name in _CA_FILES if (path / name).exists()]


def init_ca_dir(
    path: Path,
    trust_domain: TrustDomain | str,
    now: datetime,
    passphrase: bytes | None = None,
    force: bool = False,
    config: CaConfig | None = None,
) -> LoadedCa:
    """Create a new CA in `path`: root, intermediate, bundle, config and state store.

    Refuses a directory that already holds a CA (or anything else) unless `force`, in
    which case the old directory is replaced whole, including its state.
    """
    td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
    path = path.absolute()
    if path.exists():
        if not path.is_dir():
            raise CaDirError(f"{path}: exists and is not a directory")
        found = _existing_ca_files(path)
        if not force:
            if found:
                raise CaDirError(
                    f"{path}: already holds a CA ({', '.join(found)}); "
                    "use --force to replace it (its keys and state are lost)"
                )
            if any(path.iterdir()):
                raise CaDirError(f"{path}: directory is not empty; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = config or CaConfig(trust_domain=td.name)
    if config.trust_domain != td.name:
        raise CaDirError(f"config trust_domain {config.trust_domain} differs from {td}")

    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.init-", dir=path.parent))
    try:
        # backend pkcs11: both keys made in the token (and destroyed again on failure).
        with new_ca_keys(config.keys, path) as (root_key, inter_key):
            root = make_root(td, root_key, now)
            # A rotating CA's first intermediate lives as long as its successors will.
            rotating = config.rotation.enabled and config.keys.backend == "file"
            ttl = timedelta(seconds=config.rotation.intermediate_ttl_seconds)
            intermediate = make_intermediate(
                td, inter_key, root, root_key, now, ttl if rotating else DEFAULT_INTERMEDIATE_TTL
            )
            bundle = TrustBundle(td, (root,), (intermediate,), bundle_sequence((root,)))
            write_config(staging / CONFIG_FILE, config)
            (staging / ROOT_CERT).write_bytes(_pem(root))
            (staging / INTERMEDIATE_CERT).write_bytes(_pem(intermediate))
            if config.keys.backend == "file":
                write_private_file(staging / ROOT_KEY, private_key_pem(root_key, passphrase))
                inter_pem = private_key_pem(inter_key, passphrase)
                write_private_file(staging / INTERMEDIATE_KEY, inter_pem)
            (staging / BUNDLE_PEM).write_bytes(bundle.roots_pem())
            (staging / BUNDLE_SPIFFE).write_text(
                json.dumps(bundle.to_spiffe_json(), indent=2) + "\n", encoding="utf-8"
            )
            open_store(config, staging).close()  # creates the schema
            _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return LoadedCa(path, config, td, root, Signer(intermediate, inter_key), bundle)


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename the finished staging directory to `path` (replacing an old one whole)."""
    if path.exists() and any(path.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "ca")
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(old / "ca", path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)  # rename(2) replaces an empty directory
    path.chmod(0o700)


def load_ca_dir(path: Path, passphrase: bytes | None = None) -> LoadedCa:
    """Load and cross-check a CA directory. Fails closed on any mismatch.

    The files must belong together: the intermediate is signed by the root, the root is
    in the bundle, both name the trust domain of ca.toml, and the key is the
    intermediate's. A directory mixed from two CAs (or a ca.toml edited to another trust
    domain) would otherwise sign SVIDs that its own bundle cannot verify, or for a trust
    domain its certificates do not name. The key files must be private to their owner
    (0600): a CA signing key that other users can read is refused, not used.
    """
    path = path.absolute()
    if not (path / CONFIG_FILE).is_file():
        raise CaDirError(f"{path}: not a CA directory (no {CONFIG_FILE}); run mesh-ca init")
    try:
        config = load_config(path / CONFIG_FILE)
    except ConfigError as exc:
        raise CaDirError(str(exc)) from exc
    td = config.trust_domain_value
    _check_private(path / INTERMEDIATE_KEY)
    _check_private(path / ROOT_KEY)  # may live offline, away from the online signer
    try:
        root = _one_cert(path / ROOT_CERT)
        intermediate = _one_cert(path / INTERMEDIATE_CERT)
        roots = load_pem_certificates(_read(path / BUNDLE_PEM), what=str(path / BUNDLE_PEM))
        key = (
            load_private_key(path / INTERMEDIATE_KEY, passphrase)
            if config.keys.backend == "file"
            else intermediate_signing_key(config.keys, path, f"{path / CONFIG_FILE}: ")
        )
    except (BundleError, KeyFileError) as exc:
        message = str(exc)
        if "encrypted" in message:
            message += f" (--passphrase-file or ${PASSPHRASE_ENV})"
        raise CaDirError(message) from exc
    if key.public_key() != intermediate.public_key():
        raise CaDirError(
            f"{path / INTERMEDIATE_KEY}: does not match the key of {path / INTERMEDIATE_CERT}"
        )
    try:
        intermediate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        why = str(exc).rstrip(".") or "its signature does not verify"
        raise CaDirError(
            f"{path / INTERMEDIATE_CERT}: not issued by {path / ROOT_CERT} ({why})"
        ) from exc
    if root not in roots:
        raise CaDirError(f"{path / BUNDLE_PEM}: does not hold the root of {path / ROOT_CERT}")
    for file, cert in ((path / ROOT_CERT, root), (path / INTERMEDIATE_CERT, intermediate)):
        named = _uri_sans(cert)
        if td.id_string() not in named:
            raise CaDirError(
                f"{file}: is a CA for {', '.join(named) or 'no trust domain'}, but "
                f"{path / CONFIG_FILE} says trust_domain = {td.name!r}"
            )
    bundle = TrustBundle(td, tuple(roots), (intermediate,), bundle_sequence(roots))
    return LoadedCa(path, config, td, root, Signer(intermediate, key), bundle)


def _check_private(file: Path) -> None:
    """Fail closed on a key file that others may read or write (a missing one is reported
    by whoever reads it)."""
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CaDirError(f"{file}: cannot read ({exc.strerror})") from exc
    if mode & 0o077:
        raise CaDirError(
            f"{file}: private key is open to other users (mode {mode:04o}); chmod 600 it"
        )


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise CaDirError(f"{file}: cannot read ({exc.strerror})") from exc


def _one_cert(file: Path) -> x509.Certificate:
    certs = load_pem_certificates(_read(file), what=str(file))
    if len(certs) != 1:
        raise CaDirError(f"{file}: expected one certificate, found {len(certs)}")
    return certs[0]
