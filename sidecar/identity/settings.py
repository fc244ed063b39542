"""What the identity lifecycle needs from the sidecar config, as one small frozen value.

The lifecycle does not read the TOML model directly: `IdentitySettings.from_config` maps the
sidecar config's ``[identity]`` table onto this, so either side can change without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from meshgate.identity import SpiffeId

__all__ = ["IdentitySettings"]


@final
@dataclass(frozen=True)
class IdentitySettings:
    """Either CA mode (`ca_addresses` + `state_dir`, optional `token_file`) or static-file mode
    (`cert_file` + `key_file`). `bundle_file` holds the trust roots in both modes: in CA mode
    it is how the sidecar recognises the CA before it has a bundle of its own."""

    spiffe_id: SpiffeId
    bundle_file: Path
    ca_addresses: tuple[str, ...] = ()
    token_file: Path | None = None
    state_dir: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # CA mode: bundle and revocations (config poll_interval_seconds); static mode: the
    # files' stamps (config reload_interval_seconds).
    poll_interval_seconds: float = 30.0
    ca_timeout_seconds: float = 10.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("identity: cert_file and key_file must be given together")
        if self.static:
            if self.ca_addresses:
                raise ValueError("identity: give either cert_file/key_file or ca_addresses")
        else:
            if not self.ca_addresses:
                raise ValueError("identity: ca_addresses is empty (or give cert_file/key_file)")
            if self.state_dir is None:
                raise ValueError("identity: state_dir is required with ca_addresses")
        for name in ("poll_interval_seconds", "ca_timeout_seconds", "backoff_base_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"identity: {name} must be > 0")
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError("identity: backoff_cap_seconds must be >= backoff_base_seconds")

    @property
    def static(self) -> bool:
        return self.cert_file is not None

    @classmethod
    def from_config(cls, identity: Any) -> IdentitySettings:
        """Build from the sidecar config's ``[identity]`` model (attribute access only)."""

        def get(name: str, default: Any = None) -> Any:
            return getattr(identity, name, default)

        spiffe_id = get("spiffe_id")
        addresses: Sequence[str] = get("ca_addresses") or ()
        defaults = cls.__dataclass_fields__

        def seconds(name: str, key: str | None = None) -> float:
            value = get(key or name)
            return float(defaults[name].default if value is None else value)  # type: ignore[arg-type]

        static = get("cert_file") is not None
        poll = "reload_interval_seconds" if static else "poll_interval_seconds"
        return cls(
            spiffe_id=spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id),
            bundle_file=Path(get("bundle_file")),
            ca_addresses=tuple(str(a) for a in addresses),
            token_file=_path(get("token_file")),
            state_dir=_path(get("state_dir")),
            cert_file=_path(get("cert_file")),
            key_file=_path(get("key_file")),
            poll_interval_seconds=seconds("poll_interval_seconds", poll),
            ca_timeout_seconds=seconds("ca_timeout_seconds"),
            backoff_base_seconds=seconds("backoff_base_seconds"),
            backoff_cap_seconds=seconds("backoff_cap_seconds"),
        )


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)
