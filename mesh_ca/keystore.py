"""The CA's key store: where `mesh_ca.ca_dir` gets new CA keys and the online signing key.

``[keys] backend = "file"`` keeps today's key files (generated here, written 0600 by
`ca_dir`); ``"pkcs11"`` makes and uses the keys inside a PKCS#11 token
(`mesh_ca.pkcs11_token`), whose signing keys are cryptography private keys
(`mesh_ca.issuance.token_key.TokenSigningKey`), so issuance code is the same for both.

The PIN comes from ``keys.pin_env`` or ``keys.pin_file`` and is used for the login only;
it is never logged nor put in an error. Every failure is a `StartupError` naming the
``keys.*`` key (and ca.toml), exit code `ExitCode.KEYS`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mesh_ca.keys_config import KeysConfig
from meshgate.exit_codes import ExitCode, StartupError
from meshgate.keys import PrivateKey, generate_key

if TYPE_CHECKING:
    from mesh_ca.pkcs11_token import Pkcs11Token

__all__ = ["intermediate_signing_key", "new_ca_keys", "open_ca_token", "read_pin"]


def read_pin(
    keys: KeysConfig, ca_dir: Path, source: str = "", environ: Mapping[str, str] | None = None
) -> tuple[str, tuple[str, str]]:
    """The PIN, and where it came from (``("keys.pin_env", NAME)`` or the pin file)."""
    if keys.pin_env is not None:
        origin = ("keys.pin_env", keys.pin_env)
        value = (os.environ if environ is None else environ).get(keys.pin_env, "")
        if not value:
            raise StartupError(
                f"{source}keys.pin_env",
                keys.pin_env,
                "the environment variable is not set or empty (it holds the token's user PIN)",
                ExitCode.KEYS,
            )
        return value, origin
    assert keys.pin_file is not None  # KeysConfig: exactly one of pin_env, pin_file
    file = Path(keys.pin_file)
    file = file if file.is_absolute() else ca_dir / file
    key = f"{source}keys.pin_file"
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        data = file.read_bytes()
    except OSError as exc:
        raise StartupError(key, file, f"cannot read ({exc.strerror})", ExitCode.KEYS) from exc
    if mode & 0o077:
        problem = f"the PIN file is open to other users (mode {mode:04o}); chmod 600 it"
        raise StartupError(key, file, problem, ExitCode.KEYS)
    lines = data.splitlines()
    try:
        pin = lines[0].decode("utf-8") if lines else ""
    except UnicodeDecodeError:
        raise StartupError(key, file, "the PIN is not UTF-8 text", ExitCode.KEYS) from None
    if not pin:
        raise StartupError(key, file, "the PIN file is empty", ExitCode.KEYS)
    return pin, ("keys.pin_file", str(file))


def open_ca_token(
    keys: KeysConfig,
    ca_dir: Path,
    *,
    write: bool = False,
    source: str = "",
    environ: Mapping[str, str] | None = None,
) -> Pkcs11Token:
    """A logged-in session on the token of ``[keys]`` (backend pkcs11)."""
    assert keys.module is not None
    assert keys.token_label is not None
    try:
        from mesh_ca.pkcs11_token import open_token
    except ModuleNotFoundError as exc:
        if exc.name != "pkcs11":
            raise
        raise StartupError(
            f"{source}keys.backend",
            "pkcs11",
            "python-pkcs11 is not installed (pip install 'meshgate[pkcs11]')",
            ExitCode.KEYS,
        ) from exc
    pin, origin = read_pin(keys, ca_dir, source, environ)
    return open_token(
        keys.module, keys.token_label, pin, write=write, source=source, pin_origin=origin
    )


@contextlib.contextmanager
def new_ca_keys(
    keys: KeysConfig, ca_dir: Path, environ: Mapping[str, str] | None = None
) -> Iterator[tuple[PrivateKey, PrivateKey]]:
    """(root key, intermediate key) for a new CA, in files' memory or made in the token.

    Keys made in the token are destroyed again if the block fails, so a failed
    ``mesh-ca init`` leaves no orphan keys behind (and its labels free).
    """
    if keys.backend == "file":
        yield generate_key(), generate_key()
        return
    assert keys.root_key_label is not None
    assert keys.intermediate_key_label is not None
    token = open_ca_token(keys, ca_dir, write=True, environ=environ)
    made: list[str] = []
    try:
        for label, name in (
            (keys.root_key_label, "root_key_label"),
            (keys.intermediate_key_label, "intermediate_key_label"),
        ):
            token.require_free(label, name)  # both, before making either
        root_key = token.generate(keys.root_key_label, "root_key_label")
        made.append(keys.root_key_label)
        intermediate_key = token.generate(keys.intermediate_key_label, "intermediate_key_label")
        made.append(keys.intermediate_key_label)
        yield root_key, intermediate_key
    except BaseException:
        for label in made:
            with contextlib.suppress(Exception):
                token.destroy(label)
        raise


def intermediate_signing_key(
    keys: KeysConfig, ca_dir: Path, source: str = "", environ: Mapping[str, str] | None = None
) -> PrivateKey:
    """The online signer's key in the token (backend pkcs11), checked non-extractable."""
    assert keys.intermediate_key_label is not None
    token = open_ca_token(keys, ca_dir, source=source, environ=environ)
    return token.signing_key(keys.intermediate_key_label, "intermediate_key_label")
