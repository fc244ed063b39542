"""The mesh as JSON: services, edges, instances and recent denials over one window. Pure.

`mesh_view(window, name, now, ca)` renders what `GET /v1/mesh` on the CA's admin listener
serves (schema in docs/monitoring.md, "The mesh JSON"; `mesh-ca mesh ...` and `mesh-ca
check` read it, and so will the dashboard). Keep it stable: add keys, never rename them.

An edge is (source service, destination service). Both ends may measure it: the
destination's sidecar (inbound: it made the policy decision, and its latency excludes the
network) and the source's (outbound). The edge's headline numbers come from the inbound
side when a sidecar there reported it, else from the outbound side (`measured_by`); both
sides are shown in full under `inbound` and `outbound`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from mesh_ca.control.mesh_window import EdgeTotals, InstanceState, MeshWindow, merged
from meshgate.identity import SpiffeId, SpiffeIdError

__all__ = ["SCHEMA_VERSION", "explain_command", "mesh_view", "service_of_id"]

SCHEMA_VERSION: Final = 1
_MAX_DENIALS_SHOWN: Final = 50
# An instance that missed this many report intervals (and at least _STALE_FLOOR) is stale.
_STALE_INTERVALS: Final = 3
_STALE_FLOOR_SECONDS: Final = 15.0


def service_of_id(spiffe_id: str) -> str:
    """SERVICE of ``spiffe://TD/ns/NS/svc/SERVICE``, else ``other`` (as the sidecars label)."""
    try:
        return SpiffeId.parse(spiffe_id).service or "other"
    except SpiffeIdError:
        return "other"


def explain_command(sample: Any, policy_dir: str | None) -> str:
    """A shell-quoted ``mesh-sidecar policy explain`` that replays a denial sample (every
    value quoted: the path and principal came from a request and may hold anything)."""
    parts = [
        "mesh-sidecar",
        "policy",
        "explain",
        policy_dir or "POLICY_DIR",
        "--principal",
        sample.principal,
        "--action",
        sample.action,
        "--resource",
        sample.resource,
    ]
    if sample.path is not None:
        parts += ["--path", sample.path]
    parts += ["--time", sample.time.isoformat()]
    return " ".join(shlex.quote(p) for p in parts)


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def _stats(totals: EdgeTotals, seconds: float) -> dict[str, Any]:
    requests = totals.requests
    latency = totals.latency
    quantiles: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        value = latency.quantile(q) if latency is not None else None
        quantiles[name] = _round(value * 1000 if value is not None else None)
    return {
        "requests": requests,
        "rps": round(requests / seconds, 3),
        "success_rate": round(totals.successes / requests, 4) if requests else None,
        "latency_ms": quantiles,
        "by_outcome": [
            {"status_class": s, "decision": d, "protocol": p, "count": n}
            for (s, d, p), n in sorted(totals.outcomes.items())
        ],
        "denials": sum(totals.denials.values()),
        "denied_by": [
            {"decision": d, "policy": p, "count": n} for (d, p), n in sorted(totals.denials.items())
        ],
        "mtls_failures": sum(totals.handshake_failures.values()),
        "mtls_failures_by_reason": dict(sorted(totals.handshake_failures.items())),
        "bytes_received": totals.bytes_received,
        "bytes_sent": totals.bytes_sent,
    }


def _stale(state: InstanceState, now: datetime) -> bool:
    limit = max(_STALE_FLOOR_SECONDS, _STALE_INTERVALS * state.interval_seconds)
    return (now - state.last_seen).total_seconds() > limit


def _instance(state: InstanceState, now: datetime) -> dict[str, Any]:
    status = state.status
    return {
        "spiffe_id": state.spiffe_id,
        "instance": state.instance,
        "service": status.service or service_of_id(state.spiffe_id),
        "address": state.address,
        "version": status.version,
        "ready": status.ready,
        "ready_code": status.ready_code,
        "ready_reason": status.ready_reason,
        "stale": _stale(state, now),
        "last_report_at": state.last_seen.isoformat(),
        "last_report_age_seconds": round((now - state.last_seen).total_seconds(), 3),
        "report_interval_seconds": state.interval_seconds,
        "reports_received": state.reports_received,
        "truncated_edges": state.truncated_edges,
        "clock_skew_seconds": round(state.clock_skew_seconds, 3),
        "svid_issued_at": state.svid_not_before.isoformat(),
        "svid_expires_at": state.svid_not_after.isoformat(),
        "svid_expires_in_seconds": round((state.svid_not_after - now).total_seconds(), 3),
        "bundle_sequence": status.bundle_sequence,
        "bundle_fingerprint": status.bundle_fingerprint,
        "policy_version": status.policy_version,
        "policy_source": status.policy_source,
        "policy_dir": status.policy_dir,
        "policy_error": status.policy_error,
        "policy_loaded_at": status.policy_loaded_at.isoformat()
        if status.policy_loaded_at
        else None,
        "workers": status.workers,
        "started_at": status.started_at.isoformat() if status.started_at else None,
        "outbound_services": list(status.outbound_services),
    }


def _health(instances: list[dict[str, Any]]) -> str:
    live = [i for i in instances if not i["stale"]]
    ready = [i for i in live if i["ready"]]
    if not instances:
        return "unknown"  # no sidecar of this service reports: seen only as a peer
    if not ready:
        return "down"
    return "healthy" if len(ready) == len(instances) else "degraded"


def mesh_view(
    window: MeshWindow,
    window_name: str,
    window_length: timedelta,
    now: datetime,
    ca: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole mesh JSON for one window at CA time `now`. `ca` is the CA's own section."""
    states = window.instances(now)
    instances = [_instance(s, now) for s in states]
    by_state = {(s.spiffe_id, s.instance): row for s, row in zip(states, instances, strict=True)}
    # Rates divide by the time this CA has heard reports for, up to the window: a CA that
    # started 30 s ago does not spread 30 s of traffic over 15 minutes.
    heard = (now - window.first_report_at).total_seconds() if window.first_report_at else 0.0
    seconds = max(1.0, min(window_length.total_seconds(), heard))
    totals = window.totals(window_length, now)

    pairs: dict[tuple[str, str], dict[str, EdgeTotals]] = {}
    for (direction, source, destination), per_instance in totals.items():
        pairs.setdefault((source, destination), {})[direction] = merged(per_instance.values())
    edges = []
    for (source, destination), sides in sorted(pairs.items()):
        inbound, outbound = sides.get("inbound"), sides.get("outbound")
        measured = "inbound" if inbound is not None and inbound.requests else "outbound"
        if outbound is None or (not outbound.requests and inbound is not None):
            measured = "inbound"
        main = inbound if measured == "inbound" else outbound
        assert main is not None
        edge: dict[str, Any] = {
            "source": source,
            "destination": destination,
            "measured_by": measured,
        }
        edge |= _stats(main, seconds)
        # Handshakes fail before a request exists: both ends' failures count for the edge.
        failures = merged(sides.values()).handshake_failures
        edge["mtls_failures"] = failures.total()
        edge["mtls_failures_by_reason"] = dict(sorted(failures.items()))
        edge["inbound"] = _stats(inbound, seconds) if inbound is not None else None
        edge["outbound"] = _stats(outbound, seconds) if outbound is not None else None
        edges.append(edge)

    names = {row["service"] for row in instances}
    names |= {name for pair in pairs for name in pair if name not in ("unknown", "other")}
    services = []
    for name in sorted(names):
        members = [row for row in instances if row["service"] == name]
        into = [
            sides.get("inbound") or sides.get("outbound")
            for (_, destination), sides in pairs.items()
            if destination == name
        ]
        stats = _stats(merged(t for t in into if t is not None), seconds)
        services.append(
            {
                "name": name,
                "health": _health(members),
                "instances": [
                    {
                        "spiffe_id": m["spiffe_id"],
                        "instance": m["instance"],
                        "ready": m["ready"],
                        "stale": m["stale"],
                    }
                    for m in members
                ],
                "inbound": stats,  # every edge into it, as its edges are measured
                "callers": sorted({src for src, dst in pairs if dst == name}),
                "callees": sorted({dst for src, dst in pairs if src == name}),
            }
        )

    denials = []
    for state, sample in window.samples(window_length, now)[:_MAX_DENIALS_SHOWN]:
        row = by_state.get((state.spiffe_id, state.instance))
        denials.append(
            {
                "time": sample.time.isoformat(),
                "reported_by": state.spiffe_id,
                "instance": state.instance,
                "principal": sample.principal,
                "action": sample.action,
                "resource": sample.resource,
                "path": sample.path,
                "decision": sample.decision,
                "policies": list(sample.policies),
                "policy_version": row["policy_version"] if row else None,
                "explain": explain_command(sample, state.status.policy_dir),
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "generated_at": now.isoformat(),
        "window": window_name,
        "window_seconds": window_length.total_seconds(),
        "rate_seconds": seconds,
        "ca": dict(ca),
        "services": services,
        "edges": edges,
        "instances": instances,
        "denials": denials,
    }
