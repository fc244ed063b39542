"""`mesh-ca check`: the doctor's checks over the CA's mesh view. Pure.

`run_checks` takes what the CA's admin listener answered (the ``/v1/mesh`` JSON, or why
it could not be read) and returns one `Check` per question, each passed or failed with a
message and, when failed, a hint saying what to do. Time comes from the view itself (the
CA's ``generated_at``), so the checks judge the mesh as the CA saw it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, final

__all__ = ["Check", "Thresholds", "run_checks"]

# With renewal at 50 % ± 10 % of the lifetime, an SVID with under a quarter left means
# renewals are failing.
_SVID_LEFT_SHARE: Final = 0.25
# An automatically rotated intermediate is replaced days before its end (activate_lead,
# 5 d by default): one with less than this left means rotation is not happening.
_ROTATING_INTERMEDIATE_WARN: Final = timedelta(days=3)


@final
@dataclass(frozen=True, slots=True)
class Thresholds:
    ca_expiry_warn: timedelta = timedelta(days=30)  # root and intermediate
    svid_warn: timedelta | None = None  # None: a quarter of each SVID's lifetime
    max_clock_skew: timedelta = timedelta(seconds=5)


@final
@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    message: str
    hint: str = ""
    details: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _human(delta: timedelta) -> str:
    """``3d``, ``5h``, ``12m`` or ``40s``: the largest whole unit (negative: expired)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{int(seconds / size)}{unit}"
    return f"{seconds}s"


def _who(row: Mapping[str, Any]) -> str:
    return f"{row['spiffe_id']} ({row['instance']})"


def _ca_checks(ca: Mapping[str, Any], now: datetime, limits: Thresholds) -> list[Check]:
    checks = [
        Check(
            "ca_store",
            bool(ca.get("store_up")),
            "the CA's state store answers" if ca.get("store_up") else "the CA's store is down",
            "" if ca.get("store_up") else "check the database (mesh-ca db status --dir DIR)",
        )
    ]
    late = []
    automatic = bool(ca.get("rotation_automatic"))
    for name in ("root", "intermediate"):
        left = _time(ca[f"{name}_not_after"]) - now
        warn = limits.ca_expiry_warn
        if name == "intermediate" and automatic:
            # The CA replaces it days before its end: only a late one is a problem.
            warn = min(warn, _ROTATING_INTERMEDIATE_WARN)
        if left < warn:
            late.append(f"{name} expires in {_human(left)} ({ca[f'{name}_not_after']})")
    checks.append(
        Check(
            "ca_certificates",
            not late,
            "; ".join(late) if late else "root and intermediate are valid for a while",
            "rotate them (docs/operations.md, CA rotation)" if late else "",
        )
    )
    if isinstance(ca.get("slots"), list):
        checks.append(_slots_check(ca, automatic))
    return checks


def _slots_check(ca: Mapping[str, Any], automatic: bool) -> Check:
    """The CA's root and intermediate slots (mesh_ca.rotation) and their dates."""
    slots = [s for s in ca["slots"] if isinstance(s, Mapping)]
    active = {s.get("kind") for s in slots if s.get("slot") == "active"}
    ok = active == {"root", "intermediate"}
    roots = sum(1 for s in slots if s.get("kind") == "root")
    return Check(
        "ca_slots",
        ok,
        f"trust sequence {ca.get('trust_sequence')}: {roots} root(s), "
        f"{len(slots) - roots} intermediate(s); automatic rotation "
        f"{'on' if automatic else 'off (or paused by a root rotation)'}",
        "" if ok else "the CA has no active root or intermediate: mesh-ca status --dir DIR",
        [
            f"{s.get('kind')} {s.get('slot')} {s.get('id')} notAfter {s.get('not_after')}"
            for s in slots
        ],
    )


def _sidecar_checks(
    instances: list[Mapping[str, Any]],
    ca: Mapping[str, Any],
    now: datetime,
    limits: Thresholds,
    central: Mapping[str, Any] | None = None,
) -> list[Check]:
    checks = []
    live = [i for i in instances if not i["stale"]]
    checks.append(
        Check(
            "sidecars_reporting",
            bool(live),
            f"{len(live)} sidecar instance(s) reporting"
            if live
            else "no sidecar reported to this CA recently",
            ""
            if live
            else "sidecars report with identity.ca_addresses and [report] enabled = true; "
            "with replicas, ask the replica they are connected to",
        )
    )
    stale = [i for i in instances if i["stale"]]
    checks.append(
        Check(
            "sidecars_stale",
            not stale,
            f"{len(stale)} instance(s) stopped reporting" if stale else "no stale sidecar",
            "is the sidecar still running, and can it reach the CA? (its log says why a "
            "report failed)"
            if stale
            else "",
            [f"{_who(i)}: last report {i['last_report_age_seconds']:.0f}s ago" for i in stale],
        )
    )
    unready = [i for i in live if not i["ready"]]
    checks.append(
        Check(
            "sidecars_ready",
            not unready,
            f"{len(unready)} instance(s) not ready" if unready else "every sidecar is ready",
            "see each sidecar's /readyz (the code says why)" if unready else "",
            [f"{_who(i)}: {i['ready_code']}: {i['ready_reason']}" for i in unready],
        )
    )
    expiring = []
    for i in live:
        issued, expires = _time(i["svid_issued_at"]), _time(i["svid_expires_at"])
        # As of its last report: a renewal since then shows with the next one (an SVID
        # that did expire makes the sidecar unready, `sidecars_ready`).
        left = expires - _time(i["last_report_at"])
        warn = limits.svid_warn or (expires - issued) * _SVID_LEFT_SHARE
        if left < warn:
            expiring.append(f"{_who(i)}: SVID expires in {_human(left)} ({i['svid_expires_at']})")
    checks.append(
        Check(
            "svid_expiry",
            not expiring,
            f"{len(expiring)} SVID(s) about to expire" if expiring else "no SVID near expiry",
            "renewals are failing: see the sidecar's /certificate (last_error) and log, and "
            "the CA's access log for refused /v1/renew"
            if expiring
            else "",
            expiring,
        )
    )
    broken = [i for i in live if i.get("policy_error")]
    split = _policy_versions(live)
    details = [f"{_who(i)}: {i['policy_error']}" for i in broken]
    # A central edit the CA refused: the sidecars keep the last published set and report
    # no error of their own, so the CA's publisher status says it.
    refused = central.get("last_error") if central else None
    if refused:
        published = (central or {}).get("published") or {}
        details.append(f"control plane (serving published v{published.get('version')}): {refused}")
    details += [f"{svc}: instances enforce {', '.join(vs)}" for svc, vs in split.items()]
    checks.append(
        Check(
            "policies",
            not details,
            "policy reloads failed or versions differ"
            if details
            else "policies loaded, one version per service",
            "fix the policy files (mesh-sidecar policy validate DIR); the last good set stays "
            "live until then"
            if broken or refused
            else ("reload the policies of the instances behind (SIGHUP)" if split else ""),
            details,
        )
    )
    ca_version = str(ca.get("version", ""))
    skewed = [
        f"{_who(i)}: {i['version']}"
        for i in live
        if _minor(str(i["version"])) != _minor(ca_version)
    ]
    checks.append(
        Check(
            "version_skew",
            not skewed,
            f"{len(skewed)} sidecar(s) run another meshgate version than the CA ({ca_version})"
            if skewed
            else f"every sidecar runs meshgate {_minor(ca_version)}.x like the CA",
            "upgrade the sidecars and the CA to the same release" if skewed else "",
            skewed,
        )
    )
    limit = limits.max_clock_skew.total_seconds()
    drifting = [
        f"{_who(i)}: {i['clock_skew_seconds']:+.1f}s"
        for i in live
        if abs(float(i["clock_skew_seconds"])) > limit
    ]
    checks.append(
        Check(
            "clock_skew",
            not drifting,
            f"{len(drifting)} sidecar clock(s) off by more than {limit:g}s"
            if drifting
            else f"sidecar clocks within {limit:g}s of the CA's",
            "sync the clocks (NTP): certificate validity is judged by each side's clock"
            if drifting
            else "",
            drifting,
        )
    )
    return checks


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _policy_versions(live: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    versions: dict[str, set[str]] = {}
    for i in live:
        if i.get("policy_version"):
            versions.setdefault(str(i["service"]), set()).add(str(i["policy_version"]))
    return {svc: sorted(vs) for svc, vs in sorted(versions.items()) if len(vs) > 1}


def _registered_check(
    registrations: Sequence[Mapping[str, Any]], instances: list[Mapping[str, Any]]
) -> Check:
    """Every endpoint registered with the control plane has a sidecar reporting under its
    SPIFFE ID (a registration outlives its sidecar until the lease runs out)."""
    live = {i["spiffe_id"] for i in instances if not i["stale"]}
    silent = [r for r in registrations if r.get("spiffe_id") not in live]
    return Check(
        "sidecars_registered",
        not silent,
        f"{len(silent)} registered endpoint(s) without a reporting sidecar"
        if silent
        else f"{len(registrations)} registered endpoint(s), each with a reporting sidecar",
        "the sidecar stopped (its lease runs out at expires_at) or does not report "
        "([report] enabled); with replicas it may report to another replica"
        if silent
        else "",
        [f"{r.get('service')} {r.get('address')}: {r.get('spiffe_id')}" for r in silent],
    )


def run_checks(
    view: Mapping[str, Any] | None,
    unreachable: str | None,
    admin: str,
    limits: Thresholds,
    registrations: Sequence[Mapping[str, Any]] | None = None,
    central: Mapping[str, Any] | None = None,
) -> list[Check]:
    """Every check; `view` is the ``/v1/mesh`` JSON, or None with `unreachable` saying why;
    `registrations` the control plane's endpoints and `central` its policy status
    (``/control/policy``; None: not available, not checked)."""
    if view is None:
        return [
            Check(
                "ca_reachable",
                ok=False,
                message=f"the CA's admin listener at {admin} does not answer: {unreachable}",
                hint=f"is `mesh-ca serve --admin-listen {admin}` running? (or pass --admin "
                "HOST:PORT / --dir of a CA with server.admin_listen)",
            )
        ]
    ca = view["ca"]
    now = _time(view["generated_at"])
    checks = [
        Check(
            "ca_reachable",
            ok=True,
            message=f"CA {ca.get('trust_domain')} answers at {admin} "
            f"(meshgate {ca.get('version')})",
        )
    ]
    checks += _ca_checks(ca, now, limits)
    checks += _sidecar_checks(view["instances"], ca, now, limits, central)
    if registrations is not None:
        checks.insert(5, _registered_check(registrations, view["instances"]))
    return checks
