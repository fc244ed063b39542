"""The sidecar's TOML configuration, validated by frozen pydantic models.

Unknown keys are errors, and every error names the file and the key path
(``sidecar.toml: outbound[0].spiffe_ids: ...``). Relative paths are resolved against the
config file's directory. Listeners that accept plaintext (outbound, admin) must be on
loopback: a plaintext listener on a routable address would bypass mTLS.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, final

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

from mesh_ca.identity import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "Address",
    "AdminConfig",
    "ConfigError",
    "IdentityConfig",
    "InboundConfig",
    "LimitsConfig",
    "LogConfig",
    "OutboundConfig",
    "PolicyConfig",
    "SidecarConfig",
    "TimeoutsConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the file and key."""


@final
@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` (``[v6]:port`` for IPv6 literals)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not host:port (IPv6 as [addr]:port)")
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError(f"port {number} in {text!r} is outside 1..65535")
        return cls(host, number)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a "host:port" string')
    return Address.parse(value)


def _loopback(value: object) -> Address:
    address = _address(value)
    if not address.is_loopback:
        raise ValueError(
            f"{address} is not a loopback address: plaintext listeners must stay on "
            "127.0.0.1, ::1 or localhost"
        )
    return address


def _spiffe_id(value: object) -> SpiffeId:
    if isinstance(value, SpiffeId):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a spiffe:// string")
    try:
        return SpiffeId.parse(value)
    except SpiffeIdError as exc:
        raise ValueError(str(exc)) from exc


_as_str = PlainSerializer(str, return_type=str)
AddressField = Annotated[Address, PlainValidator(_address), _as_str]
LoopbackAddress = Annotated[Address, PlainValidator(_loopback), _as_str]
SpiffeIdField = Annotated[SpiffeId, PlainValidator(_spiffe_id), _as_str]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
Protocol = Literal["tcp", "http"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


@final
class IdentityConfig(_Model):
    """Who this sidecar is. Either bootstrap from the CA (``ca_addresses`` + ``state_dir``,
    ``token_file`` for the first start) or static files (``cert_file`` + ``key_file``)."""

    spiffe_id: SpiffeIdField
    bundle_file: Path
    ca_addresses: tuple[AddressField, ...] = ()
    token_file: Path | None = None
    state_dir: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    reload_interval_seconds: Seconds = 5.0  # static files: how often their mtime is checked
    # CA mode: how often the trust bundle and the revocations are fetched, so a revoked peer
    # is refused (and its open connections closed) at most this long after `mesh-ca revoke`.
    poll_interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0

    @property
    def trust_domain(self) -> TrustDomain:
        return self.spiffe_id.trust_domain

    @property
    def static(self) -> bool:
        return self.cert_file is not None

    @pydantic.model_validator(mode="after")
    def _one_mode(self) -> Self:
        bootstrap = bool(self.ca_addresses) or self.state_dir is not None or self.token_file
        static = self.cert_file is not None or self.key_file is not None
        if bootstrap and static:
            raise ValueError(
                "set either ca_addresses/state_dir/token_file (bootstrap from the CA) "
                "or cert_file/key_file (static identity files), not both"
            )
        if static and (self.cert_file is None or self.key_file is None):
            raise ValueError("static identity needs both cert_file and key_file")
        if static and "poll_interval_seconds" in self.model_fields_set:
            raise ValueError(
                "poll_interval_seconds applies to bootstrap from the CA; static identity "
                "files are re-read every reload_interval_seconds"
            )
        if not static and (not self.ca_addresses or self.state_dir is None):
            raise ValueError(
                "set ca_addresses and state_dir (bootstrap from the CA), "
                "or cert_file and key_file (static identity files)"
            )
        if not self.spiffe_id.path:
            raise ValueError(f"spiffe_id {self.spiffe_id} names a trust domain, not a workload")
        return self


@final
class InboundConfig(_Model):
    """Terminates mTLS on ``listen`` and forwards authorized connections to ``app``."""

    listen: AddressField
    app: AddressField
    service: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    protocol: Protocol = "tcp"
    # tcp mode without [policy]: the peers allowed to connect. Fails closed: an ID not
    # listed is refused. With [policy], Cedar decides `connect` instead.
    allowed_ids: tuple[SpiffeIdField, ...] = ()


@final
class OutboundConfig(_Model):
    """Accepts plaintext from the local app on ``listen`` and originates mTLS to ``endpoints``."""

    listen: LoopbackAddress
    service: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    endpoints: Annotated[tuple[AddressField, ...], Field(min_length=1)]
    # Secure naming: the upstream must present one of these, not just any valid SVID.
    spiffe_ids: Annotated[tuple[SpiffeIdField, ...], Field(min_length=1)]
    protocol: Protocol = "tcp"
    # http mode: pooled mTLS connections to the endpoints (see sidecar.pool).
    pool_max_idle_per_endpoint: Annotated[int, Field(ge=0, le=4096)] = 64
    pool_idle_timeout_seconds: Seconds = 60.0
    endpoint_backoff_seconds: Seconds = 5.0  # a failed connect takes an endpoint out this long


@final
class PolicyConfig(_Model):
    """Cedar policies from ``dir`` decide every inbound request (http) or connection (tcp).

    ``audit``: decide and log/count what would be denied, but forward it anyway.
    """

    dir: Path
    audit: bool = False
    reload_interval_ms: Annotated[int, Field(ge=50, le=3_600_000)] = 250


@final
class AdminConfig(_Model):
    listen: LoopbackAddress


@final
class TimeoutsConfig(_Model):
    connect_timeout_seconds: Seconds = 5.0
    handshake_timeout_seconds: Seconds = 10.0
    idle_timeout_seconds: Seconds = 300.0
    drain_timeout_seconds: Seconds = 20.0
    # http mode: a request head must be complete this long after its first byte; a body
    # may pause this long between reads; a kept-alive connection may wait this long for
    # its next request; the app must start its response this long after the request.
    header_timeout_seconds: Seconds = 10.0
    body_idle_timeout_seconds: Seconds = 30.0
    keepalive_idle_timeout_seconds: Seconds = 60.0
    response_timeout_seconds: Seconds = 30.0


@final
class LimitsConfig(_Model):
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1024


def _access_log(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be "stdout", "stderr", "off" or a file path')
    return value


@final
class LogConfig(_Model):
    """Where logs go. ``format = "auto"``: human-readable on a terminal, JSON lines otherwise."""

    # Access log: one line per request (http) or connection (tcp). A relative path is
    # resolved against the config file's directory.
    access_log: Annotated[str, PlainValidator(_access_log)] = "stdout"
    format: Literal["json", "text", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"  # application logs (stderr)


@final
class SidecarConfig(_Model):
    identity: IdentityConfig
    inbound: InboundConfig | None = None
    outbound: tuple[OutboundConfig, ...] = ()
    admin: AdminConfig | None = None
    policy: PolicyConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    workers: Annotated[int, Field(ge=1, le=64)] = 1

    @pydantic.model_validator(mode="after")
    def _distinct_listeners(self) -> Self:
        seen: dict[Address, str] = {}
        named = [("inbound.listen", self.inbound.listen)] if self.inbound else []
        named += [(f"outbound[{i}].listen", o.listen) for i, o in enumerate(self.outbound)]
        named += [("admin.listen", self.admin.listen)] if self.admin else []
        for key, address in named:
            if address in seen:
                raise ValueError(f"{key} {address} is also {seen[address]}")
            seen[address] = key
        if self.inbound is None and not self.outbound:
            raise ValueError("nothing to run: configure [inbound] and/or [[outbound]]")
        return self

    @pydantic.model_validator(mode="after")
    def _inbound_is_authorized(self) -> Self:
        """Fails closed: an inbound without a way to authorize is a config error."""
        inbound = self.inbound
        if inbound is None or self.policy is not None:
            return self
        if inbound.protocol == "http":
            raise ValueError(
                "policy: inbound.protocol = 'http' needs a [policy] section (dir = ...)"
            )
        if not inbound.allowed_ids:
            raise ValueError(
                "inbound.allowed_ids is empty and there is no [policy] section: "
                "in tcp mode every peer would be refused"
            )
        return self


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _resolve(data: dict[str, Any], base: Path) -> None:
    identity = data.get("identity")
    if isinstance(identity, dict):
        for key in ("bundle_file", "token_file", "state_dir", "cert_file", "key_file"):
            value = identity.get(key)
            if isinstance(value, str) and value:
                identity[key] = str(base / value)
    policy = data.get("policy")
    if isinstance(policy, dict) and isinstance(policy.get("dir"), str) and policy["dir"]:
        policy["dir"] = str(base / policy["dir"])
    log = data.get("log")
    sink = log.get("access_log") if isinstance(log, dict) else None
    if isinstance(sink, str) and sink and sink not in ("stdout", "stderr", "off"):
        log["access_log"] = str(base / sink)  # type: ignore[index]


def parse_config(data: dict[str, Any], *, source: str, base: Path | None = None) -> SidecarConfig:
    """Validate a parsed TOML document; `source` names it in errors."""
    if base is not None:
        _resolve(data, base)
    try:
        return SidecarConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = [
            f"{source}: {_key_path(tuple(e['loc'])) or '(top level)'}: {_message(e)}"
            for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: Path | str) -> SidecarConfig:
    """Read and validate a sidecar TOML file. `ConfigError` names the file and key."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    return parse_config(data, source=str(path), base=path.parent)
