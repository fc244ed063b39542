"""The sidecar's TOML configuration, validated by frozen pydantic models.

Unknown keys are errors, and every error names the file and the key path
(``sidecar.toml: outbound[0].spiffe_ids: ...``). Relative paths are resolved against the
config file's directory. Listeners that accept plaintext (outbound, admin) must be on
loopback: a plaintext listener on a routable address would bypass mTLS. So must the
inbound app (the plaintext hop after mTLS), unless ``inbound.allow_non_loopback_app``.

Why one module: it is the one pydantic model tree of the sidecar's TOML; the
cross-section checks in `SidecarConfig` need every section, and
`scripts/gen_config_reference.py` walks this tree to write docs/configuration.md. Each
section is a small class; the file is long because every key carries its description.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, final
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

from meshgate.config_file import config_error, read_toml
from meshgate.errors import ConfigError
from meshgate.identity import SpiffeId, SpiffeIdError, TrustDomain
from sidecar.transport.lifetime import LifetimeMode, LifetimePolicy

__all__ = [
    "Address",
    "AdminConfig",
    "ConfigError",
    "ConnectionLifetimeConfig",
    "ControlPlaneConfig",
    "IdentityConfig",
    "InboundConfig",
    "LimitsConfig",
    "LogConfig",
    "OutboundConfig",
    "PolicyConfig",
    "ReportConfig",
    "SidecarConfig",
    "TimeoutsConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
]


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


def _is_wildcard(address: Address) -> bool:
    try:
        return ipaddress.ip_address(address.host).is_unspecified
    except ValueError:
        return address.host == ""


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

    spiffe_id: Annotated[
        SpiffeIdField,
        Field(
            description=(
                "this sidecar's workload ID (it needs a path, not just the trust domain). The "
                "SVID in use must carry exactly this ID: one the CA issues for another ID, or "
                "a cert_file naming another, is refused"
            )
        ),
    ]
    bundle_file: Annotated[
        Path,
        Field(
            description=(
                "PEM trust roots of this sidecar's trust domain. CA mode: how the sidecar "
                "recognises the CA on its first start; once it has fetched the bundle from the "
                "CA it uses the copy in state_dir (bundle.pem). Static mode: the peers' roots, "
                "re-read with cert_file and key_file"
            )
        ),
    ]
    ca_addresses: Annotated[
        tuple[AddressField, ...],
        Field(
            description=(
                "CA mode: the CA replicas' host:port, tried in this order until one answers "
                "(for bootstrap, renewal, bundle and revocation fetches). The CA is "
                "recognised by its SPIFFE ID (spiffe://TRUST_DOMAIN/mesh/ca), not by hostname"
            )
        ),
    ] = ()
    token_file: Annotated[
        Path | None,
        Field(
            description=(
                "CA mode: file holding a one-time join token (`mesh-ca token create`). Read "
                "only when state_dir has no usable SVID (first start, or after the SVID "
                "expired: then checked every second); a missing or empty file means wait for "
                "one. A spent token is remembered in state_dir and never sent twice"
            )
        ),
    ] = None
    state_dir: Annotated[
        Path | None,
        Field(
            description=(
                "CA mode (required there): directory for svid.pem, svid.key (mode 0600), "
                "bundle.pem and token.used, created with mode 0700 if missing. A restart "
                "reuses a stored SVID that is still valid, without a token"
            )
        ),
    ] = None
    cert_file: Annotated[
        Path | None,
        Field(
            description=(
                "static mode (with key_file): PEM SVID chain, leaf first, then any "
                "intermediates. Re-read on SIGHUP or when a file changes; a bad file is "
                "logged and the current SVID keeps serving"
            )
        ),
    ] = None
    key_file: Annotated[
        Path | None,
        Field(
            description=(
                "static mode (with cert_file): the PEM private key of the cert_file leaf; a "
                "key that does not match the leaf is refused"
            )
        ),
    ] = None
    reload_interval_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "static mode: seconds between checks of the mtimes of cert_file, key_file and "
                "bundle_file; a change reloads them (SIGHUP reloads at once)"
            )
        ),
    ] = 5.0
    poll_interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=3600,
            description=(
                "CA mode: seconds between fetches of the trust bundle and the revocations, so "
                "a revoked peer is refused (and its open connections closed) at most this "
                "long after `mesh-ca revoke`. Not allowed with static identity files"
            ),
        ),
    ] = 30.0

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

    listen: Annotated[
        AddressField,
        Field(description="host:port where peers' sidecars connect with mTLS (any address)"),
    ]
    advertise: Annotated[
        AddressField | None,
        Field(
            description=(
                "with [control_plane]: the host:port peers dial to reach this listener, "
                "registered with the control plane. Default: listen, unless listen is a "
                "wildcard (0.0.0.0, ::), which peers cannot dial: then advertise is required"
            )
        ),
    ] = None
    # Declared before `app`: its validator reads this value.
    allow_non_loopback_app: Annotated[
        bool,
        Field(
            description=(
                "true: let app be a non-loopback address (or a hostname other than "
                "localhost). The hop from the sidecar to the app is plaintext and "
                "unauthenticated, so off the host it leaves the mesh's protection; only for "
                "an app reachable on a link you trust (like ghostunnel's --unsafe-target)"
            )
        ),
    ] = False
    app: Annotated[
        AddressField,
        Field(
            description=(
                "host:port of the local app; authorized traffic goes there in plaintext. "
                "Loopback only (127.0.0.1, ::1, localhost) unless allow_non_loopback_app"
            )
        ),
    ]
    service: Annotated[
        str,
        Field(
            min_length=1,
            pattern=r"^[A-Za-z0-9._-]+$",
            description=(
                "name of the service behind this sidecar: the Cedar resource that policies "
                "match, and the service field of logs and metrics"
            ),
        ),
    ]
    protocol: Annotated[
        Protocol,
        Field(
            description=(
                '"tcp": authorize action connect once per connection, then relay bytes; '
                '"http": parse HTTP/1.1 and authorize every request (needs [policy])'
            )
        ),
    ] = "tcp"
    allowed_ids: Annotated[
        tuple[SpiffeIdField, ...],
        Field(
            description=(
                "tcp mode without [policy]: the peer SPIFFE IDs allowed to connect. Fails "
                "closed: an ID not listed is refused, and an empty list without [policy] is a "
                "config error. With [policy], Cedar decides connect and this list is unused"
            )
        ),
    ] = ()
    forwarded_headers: Annotated[
        Literal["set", "strip", "append"],
        Field(
            description=(
                "http mode: client-sent Forwarded, X-Forwarded-*, X-Real-IP, X-Envoy-*, l5d-*, "
                'X-Original-URL and method-override headers. "set": drop them and set '
                "X-Forwarded-For, X-Forwarded-Proto: https and Forwarded from the verified "
                'connection; "strip": drop them, set nothing; "append": keep the client\'s '
                "X-Forwarded-For and Forwarded chains and append this hop (only when every "
                "peer is a proxy trusted to write them)"
            )
        ),
    ] = "set"
    path_match: Annotated[
        Literal["exact", "case_insensitive"],
        Field(
            description=(
                'http mode: "exact": context.path is the normalized path as sent, so a '
                'policy on "/admin" does not match "/ADMIN"; "case_insensitive": policies see '
                "the path lower-cased (write their paths in lower case) while the app still "
                "gets it as sent. For apps that match routes case-insensitively"
            )
        ),
    ] = "exact"

    @property
    def advertised(self) -> Address | None:
        """The address registered with the control plane; None for a wildcard listen
        without ``advertise`` (a config error once [control_plane] is set)."""
        if self.advertise is not None:
            return self.advertise
        return None if _is_wildcard(self.listen) else self.listen

    @pydantic.field_validator("app")
    @classmethod
    def _app_on_loopback(cls, app: Address, info: pydantic.ValidationInfo) -> Address:
        """Fails closed: a plaintext hop off the host needs the operator's explicit consent."""
        if app.is_loopback or info.data.get("allow_non_loopback_app", False):
            return app
        raise ValueError(
            f"{app} is not a loopback address: the hop to the app is plaintext, so it must "
            "stay on 127.0.0.1, ::1 or localhost (set inbound.allow_non_loopback_app = true "
            "to accept a plaintext hop off this host)"
        )


@final
class OutboundConfig(_Model):
    """Accepts plaintext from the local app on ``listen`` and originates mTLS to ``endpoints``."""

    listen: Annotated[
        LoopbackAddress,
        Field(
            description=(
                "host:port where the local app connects in plaintext; loopback only, since a "
                "plaintext listener on a routable address would bypass mTLS"
            )
        ),
    ]
    service: Annotated[
        str,
        Field(
            min_length=1,
            pattern=r"^[A-Za-z0-9._-]+$",
            description="name of the destination service, for logs, metrics and the admin views",
        ),
    ]
    endpoints: Annotated[
        tuple[AddressField, ...],
        Field(
            description=(
                "host:port of the destination's inbound sidecars, used round-robin; when "
                "one fails the next is tried. Empty or absent: discovery, the endpoints "
                "registered for service with the control plane (needs [control_plane])"
            ),
        ),
    ] = ()
    spiffe_ids: Annotated[
        tuple[SpiffeIdField, ...],
        Field(
            description=(
                "secure naming: the upstream must present an SVID with one of these IDs, not "
                "just any valid SVID of the trust domain; otherwise the connection is refused. "
                "Required with static endpoints. With discovery each endpoint must present "
                "the ID it registered with, and, when this list is set, one of these too"
            ),
            validate_default=True,
        ),
    ] = ()
    protocol: Annotated[
        Protocol,
        Field(
            description=(
                '"tcp": one mTLS connection per local connection, bytes relayed; "http": '
                "parse HTTP/1.1 and send requests over pooled, reused mTLS connections"
            )
        ),
    ] = "tcp"
    pool_max_idle_per_endpoint: Annotated[
        int,
        Field(
            ge=0,
            le=4096,
            description=(
                "http mode: idle mTLS connections kept per endpoint for reuse; more are "
                "closed when released (0: no reuse, a handshake per request)"
            ),
        ),
    ] = 64
    pool_idle_timeout_seconds: Annotated[
        Seconds,
        Field(
            description="http mode: seconds a pooled connection may stay idle before it is closed"
        ),
    ] = 60.0
    endpoint_backoff_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode: seconds an endpoint is skipped after a failed connect or "
                "handshake (the others are tried). tcp mode tries every endpoint in turn for "
                "each connection"
            )
        ),
    ] = 5.0
    eject_after_failures: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description=(
                "passive health: this many consecutive failures of an endpoint (connect, "
                "handshake, a connection cut before the response) eject it for "
                "eject_seconds; requests go to the others meanwhile"
            ),
        ),
    ] = 3
    eject_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "passive health: seconds an ejected endpoint gets no requests while "
                "others are healthy (with none healthy, ejected ones are still tried)"
            )
        ),
    ] = 10.0

    @property
    def discovered(self) -> bool:
        """No static endpoints: the endpoint set comes from the control plane."""
        return not self.endpoints

    @pydantic.field_validator("spiffe_ids")
    @classmethod
    def _static_needs_ids(
        cls, ids: tuple[SpiffeId, ...], info: pydantic.ValidationInfo
    ) -> tuple[SpiffeId, ...]:
        """Fails closed: static endpoints without secure naming would accept any SVID."""
        if info.data.get("endpoints") and not ids:
            raise ValueError(
                "static endpoints need at least 1 SPIFFE ID they must present (secure naming)"
            )
        return ids


@final
class ControlPlaneConfig(_Model):
    """The mesh CA as control plane, over the sidecar's mTLS connection to it (CA mode
    identity only): registration of ``[inbound]``, discovery for ``[[outbound]]`` without
    ``endpoints``, and policies with ``[policy] source = "control-plane"``."""

    register_inbound: Annotated[
        bool,
        Field(
            description=(
                "register [inbound] (service, advertised address, protocol) under this "
                "sidecar's SPIFFE ID, renew its lease as the CA says (the lease TTL and "
                "renewal interval are the CA's settings) and deregister it on drain"
            )
        ),
    ] = True
    deregister_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description=(
                "on drain: seconds between deregistration and closing the listeners, so "
                "peers learn that this instance left (watchers hear within milliseconds) "
                "and stop sending before a request could meet a closed connection"
            ),
        ),
    ] = 1.0
    watch_wait_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=30,
            description=(
                "seconds the CA may hold a watch (endpoints, policies) open waiting for a "
                "change before it answers with the current set (long-poll)"
            ),
        ),
    ] = 20.0
    retry_max_seconds: Annotated[
        float,
        Field(
            ge=0.1,
            le=300,
            description=(
                "longest pause between attempts while the CA is unreachable or refuses "
                "(the pause starts at 0.1 s and doubles)"
            ),
        ),
    ] = 5.0
    stale_after_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "policies from the control plane count as stale (metrics, /readyz details, "
                "/policies) when no watch answer came for this many seconds; the last good "
                "set keeps being enforced"
            )
        ),
    ] = 60.0


@final
class PolicyConfig(_Model):
    """Cedar policies from ``dir`` decide every inbound request (http) or connection (tcp).

    ``audit``: decide and log/count what would be denied, but forward it anyway.
    """

    source: Annotated[
        Literal["dir", "control-plane"],
        Field(
            description=(
                '"dir": the policy directory dir; "control-plane": the policies and entities '
                "that concern [inbound] service, published by the CA (needs [control_plane] "
                "and [inbound]). They are validated, then swapped in atomically, kept in "
                "identity.state_dir/policies for a restart while the CA is unreachable; "
                "before the first set every request is denied"
            )
        ),
    ] = "dir"
    dir: Annotated[
        Path | None,
        Field(
            description=(
                "directory of *.cedar policies, the .cedarschema schema and the entities "
                "JSON file. A change is validated, then swapped in atomically; on an error the "
                "last good set stays (the sidecar refuses to start without a valid set). "
                'Required with source = "dir", not allowed with "control-plane"'
            )
        ),
    ] = None
    audit: Annotated[
        bool,
        Field(
            description=(
                "true: decide and log/count what would be denied (decision audit_deny), but "
                "forward it anyway. For trying out policies, never for enforcement"
            )
        ),
    ] = False
    reload_interval_ms: Annotated[
        int,
        Field(
            ge=50,
            le=3_600_000,
            description=(
                "milliseconds between checks of the directory (file names, sizes, mtimes); a "
                "change reloads it (SIGHUP reloads at once)"
            ),
        ),
    ] = 250

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.source == "dir" and self.dir is None:
            raise ValueError('dir is required with source = "dir"')
        if self.source == "control-plane" and self.dir is not None:
            raise ValueError('dir is not used with source = "control-plane": remove one')
        return self


@final
class AdminConfig(_Model):
    listen: Annotated[
        LoopbackAddress,
        Field(
            description=(
                "host:port of the admin HTTP listener (/healthz, /readyz, /metrics, JSON "
                "views); loopback only: it is plaintext and unauthenticated"
            )
        ),
    ]


@final
class TimeoutsConfig(_Model):
    connect_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "seconds to open a TCP connection to the local app (inbound) or to an "
                "endpoint (outbound); then the next endpoint is tried, or the client is refused"
            )
        ),
    ] = 5.0
    handshake_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "seconds for a TLS handshake and the peer's SVID checks, either direction; "
                "a slower peer is disconnected"
            )
        ),
    ] = 10.0
    client_hello_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "inbound: seconds a new connection may stay silent before its first "
                "handshake byte; a silent one is closed (counted by reason "
                "client_hello_timeout), so idle sockets hold a pending slot only this long"
            )
        ),
    ] = 3.0
    idle_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "tcp mode: a relayed connection on which no byte moves either way for this "
                "many seconds is closed on both sides"
            )
        ),
    ] = 300.0
    drain_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "on SIGTERM/SIGINT the listeners close at once, open connections may finish "
                "for this many seconds, then the rest are cancelled and the sidecar exits 0"
            )
        ),
    ] = 20.0
    header_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode: a request head must be complete this many seconds after its first byte"
            )
        ),
    ] = 10.0
    body_idle_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode: seconds a request or response body may pause between reads, and "
                "a write of the response may wait for a client that does not read"
            )
        ),
    ] = 30.0
    keepalive_idle_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode: seconds a kept-alive connection may wait for its next request "
                "before it is closed"
            )
        ),
    ] = 60.0
    response_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode: seconds the app (or the upstream sidecar) has to send its final "
                "response head after the request (each request body piece sent restarts it, "
                "a 1xx does not); then the client gets 504"
            )
        ),
    ] = 30.0
    body_timeout_seconds: Annotated[
        Seconds,
        Field(
            description=(
                "http mode, both directions: a request body must be complete this many "
                "seconds after it started, plus one second per body_min_rate_bytes_per_second "
                "bytes received; a slower body is cut with 408 (counted in "
                "meshgate_request_body_timeouts_total)"
            )
        ),
    ] = 60.0
    body_min_rate_bytes_per_second: Annotated[
        int,
        Field(
            ge=0,
            le=1_000_000_000,
            description=(
                "http mode: the rate that earns a request body more time past "
                "body_timeout_seconds; 0 makes body_timeout_seconds a hard total"
            ),
        ),
    ] = 1024


@final
class ConnectionLifetimeConfig(_Model):
    """What bounds a mesh connection's life (see docs/security.md, "Connection lifetime")."""

    mode: Annotated[
        Literal["strict", "until_revoked"],
        Field(
            description=(
                '"strict": a connection ends when the first of the two SVIDs of its handshake '
                'expires, cutting any stream still open. "until_revoked": it lasts until the '
                "peer is revoked, no longer chains to the trust bundle, this sidecar has no "
                "unexpired SVID, or max_age_seconds pass, across any number of rotations "
                "(for long downloads and tcp streams)"
            )
        ),
    ] = "strict"
    max_age_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=7 * 24 * 3600,
            description='mode "until_revoked": seconds after its handshake a connection is cut',
        ),
    ] = 3600.0
    retire_margin_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description=(
                "http mode: seconds before a connection's end that the outbound pool stops "
                "putting requests on it and the inbound side answers connection: close, so "
                "a rotation fails no request (the pool also stops as soon as the SVID it "
                "presented was superseded). A request still running at the end is cut in "
                'mode "strict": keep this above the longest response'
            ),
        ),
    ] = 10.0

    def policy(self) -> LifetimePolicy:
        return LifetimePolicy(
            LifetimeMode(self.mode), self.max_age_seconds, self.retire_margin_seconds
        )


@final
class LimitsConfig(_Model):
    max_connections: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "open proxied connections, inbound and outbound together, per process; one "
                "more is closed at once, before any handshake (counted by reason max_connections)"
            ),
        ),
    ] = 1024
    max_connections_per_source: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "inbound: open connections from one source (an IPv4 address, or an IPv6 /64) "
                "per process; one more is closed before its handshake (reason "
                "max_connections_per_source)"
            ),
        ),
    ] = 256
    max_handshaking_connections: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "inbound: connections still in their mesh handshake, all sources together, "
                "per process; when full, the oldest pending one is closed to admit the new "
                "one (reason handshake_evicted). Verified peers never count here, so "
                "unauthenticated sockets cannot take their slots. Capped at max_connections "
                "(setting it higher explicitly is an error)"
            ),
        ),
    ] = 128
    max_handshaking_per_source: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description=(
                "inbound: connections still in their mesh handshake from one source (an IPv4 "
                "address, or an IPv6 /64); one more is closed at once (reason "
                "max_handshaking_per_source)"
            ),
        ),
    ] = 32

    @pydantic.model_validator(mode="after")
    def _budgets_fit(self) -> Self:
        # Only limits set explicitly must fit: a default pending budget above a small
        # max_connections is capped at it (`effective_*`), so older configs keep loading.
        explicit = self.model_fields_set
        if "max_handshaking_connections" not in explicit:
            return self
        if self.max_handshaking_connections > self.max_connections:
            raise ValueError(
                "max_handshaking_connections must not exceed max_connections "
                f"({self.max_handshaking_connections} > {self.max_connections})"
            )
        if (
            "max_handshaking_per_source" in explicit
            and self.max_handshaking_per_source > self.max_handshaking_connections
        ):
            raise ValueError(
                "max_handshaking_per_source must not exceed max_handshaking_connections "
                f"({self.max_handshaking_per_source} > {self.max_handshaking_connections})"
            )
        return self


def _access_log(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be "stdout", "stderr", "off" or a file path')
    return value


@final
class LogConfig(_Model):
    """Where logs go. ``format = "auto"``: human-readable on a terminal, JSON lines otherwise."""

    access_log: Annotated[
        str,
        PlainValidator(_access_log),
        Field(
            description=(
                "where the access log goes, one line per request (http) or connection (tcp): "
                '"stdout", "stderr", "off" or a file (appended to, reopened when logrotate '
                "moves it; relative to the config file's directory)"
            )
        ),
    ] = "stdout"
    format: Annotated[
        Literal["json", "text", "auto"],
        Field(
            description=(
                'log line format: "json" (one object a line), "text" (for people) or "auto" '
                "(per log: text when its stream is a terminal, JSON otherwise)"
            )
        ),
    ] = "auto"
    level: Annotated[
        Literal["debug", "info", "warning", "error"],
        Field(description="lowest level of the application log (stderr) that is written"),
    ] = "info"


def _otlp_endpoint(value: object) -> str:
    """An OTLP/HTTP traces URL; a bare ``http://host:port`` gets the standard /v1/traces."""
    if not isinstance(value, str):
        raise ValueError('must be an "http://host:port/v1/traces" string')
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError("credentials in the URL would be shown in /config and logs")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{value!r}: no query or fragment")
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port outside 0..65535
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    if parsed.path in ("", "/"):
        return urlunsplit((parsed.scheme, parsed.netloc, "/v1/traces", "", ""))
    return value


@final
class TracingConfig(_Model):
    """A span for every http-mode request, each hop (inbound and outbound) one span, sent to
    an OpenTelemetry collector over OTLP/HTTP, with W3C `traceparent` passed on to the next
    hop and the app. Off when the section is absent; needs ``pip install 'meshgate[tracing]'``
    (a sidecar without it refuses to start, naming ``tracing.endpoint``)."""

    endpoint: Annotated[
        str,
        PlainValidator(_otlp_endpoint),
        Field(
            description=(
                "the OTLP/HTTP traces URL of a collector (protobuf body), e.g. "
                '"http://127.0.0.1:4318/v1/traces"; a URL without a path gets /v1/traces. '
                "Spans are sent from a background thread: a slow or absent collector never "
                "delays or fails a request (spans are dropped when the queue is full)"
            )
        ),
    ]
    service_name: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=255,
            description=(
                "the service.name resource attribute of the spans; default: the SERVICE of "
                "identity.spiffe_id (spiffe://TD/ns/NS/svc/SERVICE), else its last path segment"
            ),
        ),
    ] = None
    sample_ratio: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description=(
                "share of new traces recorded (by trace id, so every hop agrees). A request "
                "that arrives with a traceparent follows its sampled flag instead"
            ),
        ),
    ] = 1.0
    export_delay_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="seconds between batch exports (a full batch goes at once)",
        ),
    ] = 5.0
    export_timeout_seconds: Annotated[
        float,
        Field(gt=0, le=60, description="seconds one export may take before it is abandoned"),
    ] = 10.0


@final
class ReportConfig(_Model):
    """Reports to the control plane: every few seconds the sidecar sends the CA (over its
    mTLS client, as its SVID) per-edge deltas of its metrics and its status (docs/
    monitoring.md). Only with a CA (``identity.ca_addresses``)."""

    enabled: Annotated[
        bool,
        Field(
            description=(
                "send reports to the CA; they feed `mesh-ca mesh stat/edges/top`, "
                "`mesh-ca check` and the dashboard. No effect with static identity files"
            )
        ),
    ] = True
    interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=300,
            description=(
                "seconds between reports; a report the CA did not take is sent again, "
                "summed, with the next one"
            ),
        ),
    ] = 5.0


@final
class SidecarConfig(_Model):
    identity: IdentityConfig
    inbound: InboundConfig | None = None
    outbound: tuple[OutboundConfig, ...] = ()
    admin: AdminConfig | None = None
    policy: PolicyConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    connection_lifetime: ConnectionLifetimeConfig = ConnectionLifetimeConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    tracing: TracingConfig | None = None
    report: ReportConfig = ReportConfig()
    control_plane: ControlPlaneConfig | None = None
    workers: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description=(
                "proxy processes sharing the listeners (SO_REUSEPORT). Above 1, a parent "
                "process keeps the identity and the admin listener and hands the SVID to "
                "the workers; data-path metrics stay per worker (not aggregated yet)"
            ),
        ),
    ] = 1

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

    @pydantic.model_validator(mode="after")
    def _control_plane_fits(self) -> Self:
        """Every control-plane feature names the key that needs what is missing."""
        control = self.control_plane
        central = self.policy is not None and self.policy.source == "control-plane"
        for index, out in enumerate(self.outbound):
            if out.discovered and control is None:
                raise ValueError(
                    f"outbound[{index}].endpoints is empty: discovery needs a [control_plane] "
                    "section (or list the endpoints)"
                )
        if central and control is None:
            raise ValueError('policy.source = "control-plane" needs a [control_plane] section')
        if central and self.inbound is None:
            raise ValueError(
                'policy.source = "control-plane" needs [inbound]: policies are published '
                "per inbound service"
            )
        if control is None:
            return self
        if self.identity.static:
            raise ValueError(
                "control_plane: needs identity from the CA (ca_addresses, state_dir), "
                "not static identity files"
            )
        if self.workers > 1:
            raise ValueError("control_plane: not supported with workers > 1 yet")
        inbound = self.inbound
        if control.register_inbound and inbound is not None and inbound.advertised is None:
            raise ValueError(
                f"inbound.advertise: required with [control_plane] because inbound.listen "
                f"{inbound.listen} is a wildcard that peers cannot dial"
            )
        return self


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
        raise config_error(source, exc) from None


def load_config(path: Path | str) -> SidecarConfig:
    """Read and validate a sidecar TOML file. `ConfigError` names the file and key."""
    path = Path(path)
    data = read_toml(path)
    return parse_config(data, source=str(path), base=path.parent)
