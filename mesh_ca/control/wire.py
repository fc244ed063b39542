"""JSON bodies of the control-plane API (issue 15). Frozen, unknown fields forbidden, every
string length-capped; both the CA (`mesh_ca.control`) and the sidecar's client use them.

The caller's SPIFFE ID never travels in a request body: the CA takes it from the verified
client certificate of the mTLS connection. Times are RFC 3339 UTC.

Routes (all POST, JSON in and out; refusals are `mesh_ca.api.ErrorResponse`):
- ``/v1/control/register``   RegisterRequest -> Lease (calling it again renews);
  403 ``registration_denied``, 400 ``bad_request``, 429 ``too_many_registrations``.
- ``/v1/control/deregister`` RegisterRequest -> Deregistered.
- ``/v1/control/endpoints``  EndpointsWatch -> EndpointSet (long-poll on ``after``).
- ``/v1/control/policies``   PoliciesWatch -> PolicySet (long-poll on ``after``; ``after`` is
  also the version the caller enforces now); 403 ``service_denied``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshgate.identity import MAX_SPIFFE_ID_BYTES

__all__ = [
    "DEREGISTER_PATH",
    "ENDPOINTS_PATH",
    "MAX_ADDRESS_CHARS",
    "MAX_WAIT_MS",
    "POLICIES_PATH",
    "REGISTER_PATH",
    "SERVICE_PATTERN",
    "Deregistered",
    "Endpoint",
    "EndpointSet",
    "EndpointsWatch",
    "Lease",
    "PoliciesWatch",
    "PolicySet",
    "Protocol",
    "RegisterRequest",
    "check_address",
    "files_sha256",
]

REGISTER_PATH: Final = "/v1/control/register"
DEREGISTER_PATH: Final = "/v1/control/deregister"
ENDPOINTS_PATH: Final = "/v1/control/endpoints"
POLICIES_PATH: Final = "/v1/control/policies"

MAX_WAIT_MS: Final = 30_000
MAX_ADDRESS_CHARS: Final = 262  # a 253-byte DNS name, ":", a 5-digit port, brackets
# A service name: also a Cedar entity id (Service::"S") and a SPIFFE path segment.
SERVICE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\z"  # rust-regex: \z is the end
_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)

ServiceName = Annotated[str, Field(min_length=1, max_length=63, pattern=SERVICE_PATTERN)]
SpiffeIdText = Annotated[str, Field(min_length=10, max_length=MAX_SPIFFE_ID_BYTES)]
Protocol = Literal["http", "tcp"]
Version = Annotated[int, Field(ge=0, le=2**63 - 1)]
WaitMs = Annotated[int, Field(ge=0, le=MAX_WAIT_MS)]


def check_address(text: str) -> str:
    """`text` if it is an address a peer can dial: ``host:port`` with an IPv4 literal, a
    bracketed IPv6 literal or a DNS name, and a port 1-65535. A wildcard or multicast
    address is refused (nobody can dial it). Raises ValueError saying what is wrong."""
    if len(text) > MAX_ADDRESS_CHARS:
        raise ValueError(f"address is longer than {MAX_ADDRESS_CHARS} characters")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {text!r} is not host:port")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r}: port must be 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"address {text!r}: unclosed '[' in an IPv6 literal")
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = _ip(host[1:-1], 6, text)
    elif all(c.isdigit() or c == "." for c in host):
        ip = _ip(host, 4, text)
    else:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"address {text!r}: host is neither an IP address nor a DNS name")
        return text
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"address {text!r}: {ip} is not an address peers can dial")
    return text


def _ip(text: str, family: int, whole: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.IPv6Address(text) if family == 6 else ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"address {whole!r}: {text!r} is not an IPv{family} address") from None
    return ip


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RegisterRequest(_Wire):
    """Register (or renew) one inbound listener of the caller; the SPIFFE ID is the caller's."""

    service: ServiceName
    address: Annotated[str, Field(min_length=3, max_length=MAX_ADDRESS_CHARS)]
    protocol: Protocol

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)


class Lease(_Wire):
    service: ServiceName
    address: str
    protocol: Protocol
    spiffe_id: SpiffeIdText
    ttl_seconds: int
    renew_seconds: int  # renew after this long; the lease expires after ttl_seconds
    expires_at: datetime


class Deregistered(_Wire):
    removed: bool


class EndpointsWatch(_Wire):
    """Answered at once when the service's current version != `after`; otherwise held up to
    `wait_ms` for a change, then answered with the current set."""

    service: ServiceName
    after: Version = 0
    wait_ms: WaitMs = 0


class Endpoint(_Wire):
    address: str
    spiffe_id: SpiffeIdText  # the ID the endpoint registered under: secure naming
    protocol: Protocol
    expires_at: datetime


class EndpointSet(_Wire):
    service: ServiceName
    version: Version
    endpoints: tuple[Endpoint, ...]


class PoliciesWatch(_Wire):
    """`after` is the policy version the caller enforces now (0: none yet)."""

    service: ServiceName
    after: Version = 0
    wait_ms: WaitMs = 0


class PolicySet(_Wire):
    """The published set's files that concern `service` (need to know). `version` and
    `sha256` name it: `sha256` is `files_sha256(files)` of the files served."""

    version: Version
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}\z")]
    service: ServiceName
    files: dict[str, str]
    published_at: datetime


def files_sha256(files: dict[str, str]) -> str:
    """The content hash of a set of policy files, as `PolicySet.sha256` carries it: SHA-256
    over each file's name and text in name order, each length-prefixed (no two different
    sets hash alike by moving bytes between names and texts)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name].encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()
