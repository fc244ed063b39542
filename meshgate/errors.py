"""The root of every meshgate exception, the family bases under it, and the one `ConfigError`.

Every exception class in `meshgate`, `mesh_ca` and `sidecar` derives from `MeshgateError`,
directly or through a family base (``tests/test_error_hierarchy.py`` enforces it), so a
caller can tell "ours" from a library's or a bug's, and a newcomer finds the tree in one
place (docs/architecture.md lists it). A class that was also a `ValueError` or `OSError`
stays one (it lists that base second): existing ``except ValueError`` sites keep working.
The family bases add no behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import final

__all__ = [
    "ConfigError",
    "IdentityError",
    "MeshgateError",
    "PolicyError",
    "ProtocolError",
    "StaleConnectionError",
    "TransportError",
]


class MeshgateError(Exception):
    """Something meshgate refuses or cannot do; the message says what and where."""


@final
class ConfigError(MeshgateError, ValueError):
    """A config file (``ca.toml``, the sidecar's TOML) is unreadable or invalid.

    The message names the file and the key (``sidecar.toml: outbound[0].listen: ...``);
    `file` and `key` hold them where the raiser knows them (None otherwise), for callers
    that want them without parsing the message.
    """

    def __init__(
        self, message: str, *, file: str | Path | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.key = key


class IdentityError(MeshgateError):
    """Family: SPIFFE IDs, trust bundles, X509-SVIDs, key files, join tokens, credentials."""


class ProtocolError(MeshgateError):
    """Family: bytes on the wire that break the HTTP rules, and the CA API's refusals."""


class TransportError(MeshgateError):
    """Family: TLS streams, mesh handshakes, connection pools and connection control flow."""


class PolicyError(MeshgateError):
    """Family: Cedar policy directories that do not load, start or initialise."""


@final
class StaleConnectionError(TransportError):
    """A reused (kept-alive or pooled) connection failed before anything was answered or
    committed on it: safe to retry once on a fresh connection. Control flow; the CA client,
    the PostgreSQL store and the inbound app pool raise and catch it around one reuse."""
