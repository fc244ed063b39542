"""The status half of a control-plane report: who this sidecar is and how it is doing.

Pure apart from reading the stores it is given: readiness as ``/readyz`` says it, the trust
bundle's sequence and root fingerprint, the live policy set (from the policy store, or,
in a workers' parent that loads none, from the workers' metrics), the meshgate version.
Text is made printable and capped as `mesh_ca.control.report_wire.SidecarStatus` wants it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from meshgate.identity import BundleSet
from meshgate.version import installed_version
from sidecar.config import SidecarConfig
from sidecar.observe.admin import AdminState, PolicyView, readiness
from sidecar.observe.metrics import SidecarMetrics

__all__ = ["instance_name", "sidecar_status", "wants_reporter"]

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def wants_reporter(config: SidecarConfig) -> bool:
    """Reports go to the CA: only with one (not with static identity files). Here, not in
    `sidecar.observe.reporter`, so a sidecar without a CA can ask without importing the CA
    client and the report's wire models."""
    return config.report.enabled and bool(config.identity.ca_addresses)


def instance_name() -> str:
    """This process among the instances of one SPIFFE ID: ``host:pid``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "host"
    return f"{host}:{os.getpid()}"


def _text(value: object, limit: int) -> str:
    """Printable text of at most `limit` characters (the wire refuses control bytes)."""
    return _CONTROL.sub(" ", str(value))[:limit]


def _bundle_facts(bundles: BundleSet, config: SidecarConfig) -> tuple[int | None, str]:
    domain = config.identity.spiffe_id.trust_domain
    bundle = bundles.get(domain)
    if bundle is None:
        return None, ""
    digest = hashlib.sha256()
    for der in sorted(r.public_bytes(serialization.Encoding.DER) for r in bundle.roots):
        digest.update(hashlib.sha256(der).digest())
    return bundle.sequence, digest.hexdigest()


def _policy_from_metrics(metrics: SidecarMetrics) -> tuple[str | None, bool]:
    """(loaded version, last reload failed) as the metrics say: with workers, the parent
    loads no policies itself and knows them only from the workers' series."""
    version: str | None = None
    failed = False
    for family in metrics.families():
        for sample in family.samples:
            if sample.name == "meshgate_policy_set_info" and sample.value >= 1:
                version = sample.labels.get("version") or version
            elif sample.name == "meshgate_policy_last_reload_failed" and sample.value >= 1:
                failed = True
    return version, failed


def sidecar_status(
    config: SidecarConfig,
    state: AdminState,
    metrics: SidecarMetrics,
    instance: str,
    started_at: datetime,
    policies: PolicyView | None = None,
) -> dict[str, Any]:
    """The ``status`` of a report (`mesh_ca.control.report_wire.SidecarStatus`)."""
    ready, code, reason = readiness(state)
    current = state.store.current
    sequence, fingerprint = _bundle_facts(current.bundles, config) if current else (None, "")
    status: dict[str, Any] = {
        "instance": instance,
        "service": config.inbound.service if config.inbound else None,
        "version": _text(installed_version(), 64),
        "ready": ready,
        "ready_code": _text(code, 128),
        "ready_reason": _text(reason, 512),
        "started_at": started_at.isoformat(),
        "bundle_sequence": sequence,
        "bundle_fingerprint": fingerprint,
        "workers": config.workers,
        "outbound_services": sorted({out.service for out in config.outbound}),
        "policy_version": None,
        "policy_source": "",
        "policy_dir": None,
        "policy_error": None,
        "policy_loaded_at": None,
    }
    if config.policy is None:
        return status
    status["policy_source"] = str(getattr(config.policy, "source", "files"))
    if config.policy.dir is not None:  # absolute: the CA's explain command runs elsewhere
        status["policy_dir"] = _text(os.path.abspath(config.policy.dir), 1024)
    if policies is not None:
        view = policies.status()
        loaded = view.get("loaded")
        if isinstance(loaded, dict):
            status["policy_version"] = _text(loaded.get("version"), 128)
            status["policy_loaded_at"] = loaded.get("loaded_at")
            if config.policy.dir is None and loaded.get("directory"):
                # A central set: the sidecar's persisted copy (state_dir/policies/v<N>/)
                # is what it enforces, so what `mesh-sidecar policy explain` replays.
                status["policy_dir"] = _text(os.path.abspath(str(loaded["directory"])), 1024)
        error = view.get("last_error")
        if isinstance(error, dict):
            problems = error.get("problems") or []
            text = "; ".join(
                f"{p.get('file') or '-'}:{p.get('line') or '-'}: {p.get('message')}"
                for p in problems
                if isinstance(p, dict)
            )
            status["policy_error"] = _text(text or "reload failed", 1024)
    else:
        version, failed = _policy_from_metrics(metrics)
        status["policy_version"] = _text(version, 128) if version else None
        if failed:
            status["policy_error"] = "the last policy reload failed (see the workers' logs)"
    return status
