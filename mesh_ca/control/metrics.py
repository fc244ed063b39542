"""The control plane's Prometheus metrics, on the CA server's registry (``meshgate_ca_*``).

Label values are fixed sets (results and refusal codes); no SPIFFE ID, service or address
is a label: a service name is any string a client sends.
"""

from __future__ import annotations

from typing import final

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ControlMetrics"]


@final
class ControlMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry(auto_describe=True)
        self.registrations = Counter(
            "meshgate_ca_control_registrations",
            "Registration requests by result (new, renewed, or the refusal code)",
            ["result"],
            registry=registry,
        )
        self.endpoints = Gauge(
            "meshgate_ca_control_endpoints",
            "Registered endpoints of every service in this replica's view",
            registry=registry,
        )
        self.watchers = Gauge(
            "meshgate_ca_control_watchers",
            "Watches (endpoints and policies long-polls) waiting for a change",
            registry=registry,
        )
        self.policy_version = Gauge(
            "meshgate_ca_control_policy_version",
            "The published policy version this replica serves (0: none)",
            registry=registry,
        )
        self.policy_publishes = Counter(
            "meshgate_ca_control_policy_publishes",
            "Policy directory changes by result (published, refused, failed)",
            ["result"],
            registry=registry,
        )
