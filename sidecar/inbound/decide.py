"""The normalize and decide stages of the inbound http session. No I/O.

`normalize` takes a parsed head to what the app will get and what the policy sees: the path
normalized once (authorized and forwarded alike), the canonical Host, hop-by-hop and
client-supplied identity headers stripped, our `x-forwarded-client-cert` (precomputed per
connection in `PeerFacts`), forwarding headers and, with ``[tracing]``, the span's
`traceparent`. `decide` asks Cedar (principal = the verified peer, action = the method,
resource = our service, context = path, query, host, the headers as the app will get them,
source, TLS version, time). Fails closed: `Decided.decision.forward` is true only for an Allow with
no evaluation errors (or, in audit mode, once a policy set is live).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from cryptography.hazmat.primitives.serialization import Encoding

from meshgate.http import (
    NormalizedTarget,
    PeerCertificate,
    RequestHead,
    forward_request_headers,
    normalize_target,
)
from meshgate.http.forwarding import ForwardedRequest, xfcc_value
from meshgate.identity.spiffe_id import SpiffeId
from sidecar.authz.cedar import source_ip
from sidecar.observe.tracing import Span
from sidecar.policy import AccessRequest, Decision, DecisionReason
from sidecar.transport.mesh_tls import MeshConnection

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sidecar.inbound.http import HttpInbound

__all__ = ["Decided", "Normalized", "PeerFacts", "decide", "normalize"]


@final
class PeerFacts:
    """What stays the same for every request on one verified connection, computed once."""

    __slots__ = ("our_id", "peer", "peer_id", "peer_id_text", "source", "source_ip", "tls", "xfcc")

    def __init__(self, conn: MeshConnection, source: str) -> None:
        self.source = source
        self.source_ip = source_ip(source)
        self.tls = conn.stream.version() or ""
        self.peer_id: SpiffeId = conn.peer_id
        self.peer_id_text = str(conn.peer_id)
        self.peer = PeerCertificate(conn.peer_id, conn.peer.leaf.public_bytes(Encoding.DER))
        self.our_id: SpiffeId = conn.credentials.spiffe_id
        self.xfcc = xfcc_value(self.our_id, self.peer)


@final
@dataclass(slots=True)
class Normalized:
    """One request as the policy will see it and the app will get it."""

    target: NormalizedTarget
    host: str
    forwarded: ForwardedRequest
    span: Span | None


@final
@dataclass(slots=True)
class Decided:
    """The decision for one normalized request (`forward`, `result`, the determining
    policies all come from it), with the extra fields its access record carries."""

    decision: Decision
    extra: dict[str, str]


def normalize(
    head: RequestHead, facts: PeerFacts, inbound: HttpInbound, policy_headers: Iterable[str]
) -> Normalized:
    """Raises `HttpError` for a target or Host we refuse (before any policy is asked)."""
    rules = inbound.rules
    target = normalize_target(head.target)
    host = rules.checked_host(head, policy_headers)
    forwarded = forward_request_headers(
        head.headers,
        our_id=facts.our_id,
        peer=facts.peer,
        new_request_id=inbound.new_request_id,
        xfcc=facts.xfcc,
    )
    tracer = inbound.runtime.tracer
    span = (
        None
        if tracer is None
        else tracer.start("inbound", head.method, inbound.config.service, forwarded)
    )
    if span is not None:
        forwarded = span.forwarded  # our span: the app's parent
    app_headers = rules.app_headers(forwarded.headers, host=host, source_ip=facts.source_ip)
    forwarded = ForwardedRequest(app_headers, forwarded.request_id, forwarded.traceparent)
    return Normalized(target, host, forwarded, span)


def decide(
    head: RequestHead, request: Normalized, facts: PeerFacts, inbound: HttpInbound
) -> Decided:
    """Cedar's verdict on `request`, counted in the metrics."""
    rt = inbound.runtime
    target = request.target
    verdict = inbound.policies.decide(
        AccessRequest(
            principal=facts.peer_id,
            action=head.method,
            service=inbound.config.service,
            source_address=facts.source_ip,
            now=rt.now(),
            path=inbound.rules.policy_path(target.path),
            query=target.query or "",
            host=request.host,
            headers=request.forwarded.headers,  # what the app will see: our XFCC, X-Forwarded-*
            tls_version=facts.tls,
        ),
        audit=inbound.audit,
    )
    rt.observer.decision(verdict.result, verdict.determining_policy_ids)
    extra = {"policy_version": verdict.version, "decision_reason": verdict.detail}
    if verdict.reason is DecisionReason.ENGINE_ERROR:
        rt.observer.policy_engine_error()
    if verdict.errored_policy_ids:
        extra["errored_policies"] = ",".join(verdict.errored_policy_ids)
    return Decided(verdict, extra)
