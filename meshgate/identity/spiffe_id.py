"""SPIFFE IDs and trust domains, parsed strictly per the SPIFFE-ID specification.

Pure: no I/O. Both types validate in their constructor, so holding one means holding a
valid value. `re.fullmatch` everywhere: a `$` anchor would let a trailing newline through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from meshgate.errors import IdentityError

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "RESERVED_PATH_PREFIX",
    "SpiffeId",
    "SpiffeIdError",
    "TrustDomain",
]

SCHEME: Final = "spiffe://"
MAX_SPIFFE_ID_BYTES: Final = 2048
RESERVED_PATH_PREFIX: Final = "/mesh/"  # the mesh's own components (the CA server: /mesh/ca)
_TRUST_DOMAIN_RE: Final = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE: Final = re.compile(r"[a-zA-Z0-9._-]+")


class SpiffeIdError(IdentityError, ValueError):
    """A string is not a valid SPIFFE ID or trust domain; the message says why."""


@final
@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A SPIFFE trust domain name such as ``example.org`` (lowercase, no port)."""

    name: str

    def __post_init__(self) -> None:
        if not self.name:
            raise SpiffeIdError("trust domain is empty")
        if not _TRUST_DOMAIN_RE.fullmatch(self.name):
            raise SpiffeIdError(
                f"trust domain {self.name!r} has characters outside [a-z0-9._-] "
                "(lowercase only; no port, userinfo or percent-encoding)"
            )

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept a bare name or ``spiffe://name`` (as config files often write it)."""
        if text.startswith(SCHEME):
            sid = SpiffeId.parse(text)
            if sid.path:
                raise SpiffeIdError(f"{text!r} is a SPIFFE ID with a path, not a trust domain")
            return sid.trust_domain
        return cls(text)

    def id_string(self) -> str:
        return f"{SCHEME}{self.name}"

    def __str__(self) -> str:
        return self.name


@final
@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://<trust-domain><path>``; ``path`` is "" or starts with "/"."""

    trust_domain: TrustDomain
    path: str = ""

    def __post_init__(self) -> None:
        _check_path(self.path)
        if len(str(self).encode()) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID longer than {MAX_SPIFFE_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise SpiffeIdError(f"SPIFFE ID must be a string, not {type(text).__name__}")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not text.startswith(SCHEME):
            raise SpiffeIdError(f"{text!r} does not start with {SCHEME!r} (scheme is lowercase)")
        rest = text[len(SCHEME) :]
        slash = rest.find("/")
        td_text, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if not td_text:
            raise SpiffeIdError(f"{text!r} has an empty trust domain")
        return cls(TrustDomain(td_text), path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain | str, *segments: str) -> SpiffeId:
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        return cls(td, "".join(f"/{s}" for s in segments))

    @classmethod
    def workload(cls, trust_domain: TrustDomain | str, namespace: str, service: str) -> SpiffeId:
        """The mesh convention ``spiffe://TD/ns/NAMESPACE/svc/SERVICE``."""
        return cls.from_segments(trust_domain, "ns", namespace, "svc", service)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """NAMESPACE under the ``/ns/NAMESPACE/svc/SERVICE`` convention, else None."""
        seg = self.segments
        return seg[1] if len(seg) == 4 and seg[0] == "ns" and seg[2] == "svc" else None

    @property
    def service(self) -> str | None:
        seg = self.segments
        return seg[3] if len(seg) == 4 and seg[0] == "ns" and seg[2] == "svc" else None

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    @property
    def reserved(self) -> bool:
        """An ID of the mesh's own components (``/mesh/...``; the CA server is
        ``/mesh/ca``): never issued to a workload, never revoked by name."""
        return self.path.startswith(RESERVED_PATH_PREFIX)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain.name}{self.path}"


def _check_path(path: str) -> None:
    if path == "":
        return
    if not path.startswith("/"):
        raise SpiffeIdError(f"path {path!r} must start with '/'")
    if path.endswith("/"):
        raise SpiffeIdError(f"path {path!r} has a trailing '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise SpiffeIdError(f"path {path!r} has an empty segment")
        if segment in (".", ".."):
            raise SpiffeIdError(f"path {path!r} has a {segment!r} segment")
        if not _SEGMENT_RE.fullmatch(segment):
            raise SpiffeIdError(
                f"path segment {segment!r} has characters outside [a-zA-Z0-9._-] "
                "(no percent-encoding, query, fragment or whitespace)"
            )
