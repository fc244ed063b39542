"""``[keys]`` of ca.toml: where the CA's root and intermediate private keys live.

``backend = "file"`` (the default): ``root.key`` and ``intermediate.key`` in the CA
directory, mode 0600, optionally passphrase-encrypted. ``backend = "pkcs11"``: both keys
are generated inside a PKCS#11 token (an HSM, or SoftHSM2) as private, sensitive,
non-extractable objects and never leave it; every CA signature is made by the token
(`mesh_ca.keystore`). The PIN is never in ca.toml: it comes from an environment variable
(``pin_env``) or a file readable only by its owner (``pin_file``).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PKCS11_ONLY_KEYS", "KeysConfig"]

PKCS11_ONLY_KEYS: Final = (
    "module",
    "token_label",
    "pin_env",
    "pin_file",
    "root_key_label",
    "intermediate_key_label",
)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class KeysConfig(BaseModel):
    """Where the CA keys live: files in the CA directory (default) or a PKCS#11 token."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    backend: Annotated[
        Literal["file", "pkcs11"],
        Field(
            description=(
                "file: root.key and intermediate.key in the CA directory (mode 0600); "
                "pkcs11: both keys generated in a PKCS#11 token, never leaving it "
                "(`mesh-ca init --keys pkcs11`, docs/operations.md)"
            )
        ),
    ] = "file"
    module: Annotated[
        str | None,
        Field(
            description=(
                "pkcs11: the PKCS#11 module (shared library) to load, e.g. "
                "/usr/lib/softhsm/libsofthsm2.so"
            )
        ),
    ] = None
    token_label: Annotated[
        str | None, Field(description="pkcs11: the label of the token that holds the keys")
    ] = None
    pin_env: Annotated[
        str | None,
        Field(description="pkcs11: name of the environment variable holding the user PIN"),
    ] = None
    pin_file: Annotated[
        str | None,
        Field(
            description=(
                "pkcs11: file (relative to the CA directory, or absolute; owner-only mode) "
                "whose first line is the user PIN; not together with pin_env"
            )
        ),
    ] = None
    root_key_label: Annotated[
        str | None,
        Field(description="pkcs11: label (CKA_LABEL) of the root key pair in the token"),
    ] = None
    intermediate_key_label: Annotated[
        str | None,
        Field(description="pkcs11: label (CKA_LABEL) of the intermediate key pair in the token"),
    ] = None

    @model_validator(mode="after")
    def _consistent(self) -> KeysConfig:
        # Messages start with the key they are about: pydantic reports them at `keys`.
        if self.backend == "file":
            for name in PKCS11_ONLY_KEYS:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only with backend = 'pkcs11'")
            return self
        for name in ("module", "token_label", "root_key_label", "intermediate_key_label"):
            value = getattr(self, name)
            if value is None or not value.strip():
                raise ValueError(f"{name}: required with backend = 'pkcs11'")
        if (self.pin_env is None) == (self.pin_file is None):
            raise ValueError(
                "pin_env, pin_file: give exactly one (the PIN itself never goes in ca.toml)"
            )
        if self.pin_env is not None and not _ENV_NAME.fullmatch(self.pin_env):
            raise ValueError(f"pin_env: {self.pin_env!r} is not an environment variable name")
        if self.root_key_label == self.intermediate_key_label:
            raise ValueError(
                "intermediate_key_label: must differ from root_key_label "
                f"(both {self.root_key_label!r})"
            )
        return self

    def describe(self) -> str:
        """Where the keys are, for `mesh-ca status` and `init` (never the PIN)."""
        if self.backend == "file":
            return "files root.key, intermediate.key (mode 0600)"
        pin = f"${self.pin_env}" if self.pin_env else f"file {self.pin_file}"
        return (
            f"PKCS#11 token {self.token_label!r} via {self.module}: keys "
            f"{self.root_key_label!r} (root), {self.intermediate_key_label!r} (intermediate); "
            f"PIN from {pin}"
        )
