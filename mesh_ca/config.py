"""The CA configuration: ``ca.toml`` in the CA directory, validated by a pydantic model.

Frozen models with unknown keys forbidden. Every error names the file and the key path
(``ca.toml: server.listen: ...``). The file is read with `tomllib` and written by hand
(`render_config`), so no TOML writer is needed.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mesh_ca.control.config import ControlConfig
from mesh_ca.federation.config import FederationConfig, check_federation
from mesh_ca.issuance.leaf import FLOOR_LEAF_TTL, MAX_LEAF_TTL, MIN_LEAF_TTL
from mesh_ca.keys_config import KeysConfig
from mesh_ca.rotation.config import RotationConfig
from meshgate.config_file import TrustDomainName, config_error, read_toml
from meshgate.errors import ConfigError
from meshgate.identity import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "CONFIG_FILE",
    "CaConfig",
    "ConfigError",
    "IssuanceConfig",
    "KeysConfig",
    "RotationConfig",
    "ServerConfig",
    "StoreConfig",
    "config_from_mapping",
    "is_loopback_host",
    "load_config",
    "parse_admin_listen",
    "parse_listen",
    "render_config",
    "write_config",
]

CONFIG_FILE: Final = "ca.toml"
_MIN_TTL_S: Final = int(MIN_LEAF_TTL.total_seconds())
_FLOOR_TTL_S: Final = int(FLOOR_LEAF_TTL.total_seconds())
_MAX_TTL_S: Final = int(MAX_LEAF_TTL.total_seconds())


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into (host, port); port 0 means any free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """Whether `host` (as `parse_listen` returns it) can only be reached from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_admin_listen(text: str, *, allow_remote: bool) -> tuple[str, int]:
    """The plain-HTTP admin address: ``HOST:PORT`` on loopback, or anywhere when
    `allow_remote` (it serves metrics without TLS or authentication). Fails closed."""
    host, port = parse_listen(text)
    if not allow_remote and not is_loopback_host(host):
        raise ValueError(
            f"{text!r} is not a loopback address; the admin listener is plain HTTP without "
            "authentication: use 127.0.0.1 or ::1, or set server.admin_allow_remote = true "
            "(--admin-allow-remote) to expose it"
        )
    return host, port


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


_TtlSeconds = Annotated[int, Field(ge=_FLOOR_TTL_S, le=_MAX_TTL_S)]


class IssuanceConfig(_Model):
    default_ttl_seconds: Annotated[
        _TtlSeconds, Field(description="lifetime of issued workload SVIDs (default 1 h)")
    ] = 3600
    min_ttl_seconds: Annotated[
        _TtlSeconds,
        Field(
            description=(
                "shortest leaf lifetime this CA issues; 300 (5 min) in production. Values "
                "down to 30 are accepted for demos and tests that want to watch rotations; "
                "such short SVIDs leave little room for a CA outage"
            )
        ),
    ] = _MIN_TTL_S
    max_ttl_seconds: Annotated[
        _TtlSeconds, Field(description="longest leaf lifetime (at most 24 h)")
    ] = _MAX_TTL_S
    token_ttl_seconds: Annotated[
        int,
        Field(
            ge=10,
            le=7 * 86400,
            description="lifetime of a join token not yet used (`mesh-ca token create --ttl`)",
        ),
    ] = 600

    @model_validator(mode="after")
    def _ordered(self) -> IssuanceConfig:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl_seconds is larger than max_ttl_seconds")
        if self.default_ttl_seconds < self.min_ttl_seconds:
            raise ValueError(
                f"default_ttl_seconds {self.default_ttl_seconds} is below min_ttl_seconds "
                f"{self.min_ttl_seconds} (lower min_ttl_seconds, down to {_FLOOR_TTL_S}, for "
                "short demo or test SVIDs)"
            )
        if self.min_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("min_ttl_seconds is larger than max_ttl_seconds")
        return self

    @property
    def ttl_bounds(self) -> tuple[timedelta, timedelta]:
        """(min, max) leaf lifetime, as `issue_leaf` takes them."""
        return timedelta(seconds=self.min_ttl_seconds), timedelta(seconds=self.max_ttl_seconds)


class ServerConfig(_Model):
    listen: Annotated[
        str,
        Field(
            description=(
                "HOST:PORT of the CA's HTTPS server ([v6]:PORT for IPv6; port 0 picks a free "
                "one); `mesh-ca serve --listen` overrides it"
            )
        ),
    ] = "127.0.0.1:8443"
    admin_ids: Annotated[
        tuple[str, ...],
        Field(
            description=(
                "SPIFFE IDs allowed to use the admin API (tokens, revocations) over mTLS. "
                "Empty: admin only through the `mesh-ca` CLI"
            )
        ),
    ] = ()
    rate_limit_per_second: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "issuance requests per second allowed from one source address (IPv6: one /64)"
            ),
        ),
    ] = 50.0
    rate_limit_burst: Annotated[
        int,
        Field(
            ge=1,
            description="issuance requests one source address (IPv6: one /64) may send in a burst",
        ),
    ] = 100
    max_body_bytes: Annotated[
        int,
        Field(
            ge=1024,
            le=16 * 1024 * 1024,
            description="largest request body accepted; a larger one gets 413",
        ),
    ] = 65536
    max_connections: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="open client connections in all; one more is closed at once",
        ),
    ] = 1024
    max_connections_per_source: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "open client connections from one source address (IPv6: one /64), so one "
                "client cannot take every slot; sidecars behind one NAT share an address: "
                "raise it for them"
            ),
        ),
    ] = 256

    admin_listen: Annotated[
        str,
        Field(
            description=(
                "HOST:PORT of a plain-HTTP admin listener serving `/metrics` and `/healthz` "
                "for a stock Prometheus; loopback only unless `admin_allow_remote`. Empty: "
                "none. `mesh-ca serve --admin-listen` overrides it"
            )
        ),
    ] = ""
    admin_allow_remote: Annotated[
        bool,
        Field(
            description=(
                "let `admin_listen` bind a non-loopback address (it has no TLS and no "
                "authentication: the metrics hold counts and expiry times, no secrets)"
            )
        ),
    ] = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _check_admin_listen(self) -> ServerConfig:
        if self.admin_listen:
            try:
                parse_admin_listen(self.admin_listen, allow_remote=self.admin_allow_remote)
            except ValueError as exc:
                raise ValueError(f"admin_listen: {exc}") from exc
        return self

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("admin_ids")
    @classmethod
    def _check_admin_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, text in enumerate(value):
            try:
                SpiffeId.parse(text)
            except SpiffeIdError as exc:
                raise ValueError(f"[{index}]: {exc}") from exc
        return value

    @property
    def admin_spiffe_ids(self) -> frozenset[SpiffeId]:
        return frozenset(SpiffeId.parse(text) for text in self.admin_ids)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class StoreConfig(_Model):
    kind: Annotated[
        Literal["sqlite", "postgres"],
        Field(
            description=(
                "where tokens, the issued-certificate ledger and revocations live: sqlite "
                "(one CA process) or postgres (several replicas, docs/ca-replicas.md)"
            )
        ),
    ] = "sqlite"
    path: Annotated[
        str, Field(description="sqlite: the database file, relative to the CA directory")
    ] = "state.db"
    url: Annotated[
        str | None,
        Field(description="postgres: a libpq URL without the password (required for postgres)"),
    ] = None
    password_env: Annotated[
        str | None,
        Field(description="postgres: name of the environment variable holding the password"),
    ] = None
    password_file: Annotated[
        str | None,
        Field(
            description=(
                "postgres: file (relative to the CA directory, owner-only mode) whose first "
                "line is the password; not together with password_env"
            )
        ),
    ] = None

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> StoreConfig:
        if self.kind == "postgres" and not self.url:
            raise ValueError("kind = 'postgres' needs url")
        return self


class CaConfig(_Model):
    trust_domain: Annotated[
        TrustDomainName,
        Field(description="the SPIFFE trust domain this CA issues for, e.g. example.org"),
    ]
    issuance: IssuanceConfig = IssuanceConfig()
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    keys: KeysConfig = KeysConfig()
    rotation: RotationConfig = RotationConfig()
    control: ControlConfig = ControlConfig()
    federation: FederationConfig = FederationConfig()

    @property
    def trust_domain_value(self) -> TrustDomain:
        return TrustDomain(self.trust_domain)

    @model_validator(mode="after")
    def _federation_authenticable(self) -> CaConfig:
        check_federation(self.trust_domain, self.federation)
        return self


def config_from_mapping(data: dict[str, object], *, source: str = CONFIG_FILE) -> CaConfig:
    try:
        return CaConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, exc) from exc


def load_config(path: Path) -> CaConfig:
    """Read and validate a ``ca.toml``; raises `ConfigError` naming the file and key."""
    return config_from_mapping(read_toml(path), source=str(path))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string of printable text is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_config(config: CaConfig) -> str:
    """The TOML text of `config`; `load_config` of it gives an equal model."""
    lines = [
        "# meshgate CA configuration (mesh-ca). Unknown keys are errors.",
        f"trust_domain = {_toml_value(config.trust_domain)}",
    ]
    # [keys] only when not the default, so a file-key CA's ca.toml stays as it was.
    sections = ["issuance", "server", "store"]
    if config.keys.backend != "file":
        sections.append("keys")
    if config.rotation != RotationConfig():
        sections.append("rotation")
    if config.control != ControlConfig():
        sections.append("control")
    for section in sections:
        model: BaseModel = getattr(config, section)
        lines += ["", f"[{section}]"]
        for key, value in model.model_dump().items():
            if value is None:
                continue  # TOML has no null: an absent key is the default
            lines.append(f"{key} = {_toml_value(value)}")
    if config.federation != FederationConfig():
        lines += ["", "[federation]", f"check_seconds = {config.federation.check_seconds}"]
        for entry in config.federation.trust_domains:
            lines += ["", "[[federation.trust_domains]]"]
            for key, value in entry.model_dump().items():
                if value is not None:
                    lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: CaConfig) -> None:
    path.write_text(render_config(config), encoding="utf-8")
