"""Wires the control-plane parts of one sidecar: registration, discovery, central policies.

`app.run` builds a `ControlPlane` when ``[control_plane]`` is set, gives each discovered
``[[outbound]]`` its `table`, calls `load_persisted` before the first SVID (a restart
during an outage enforces the persisted policy set at once), `start` once the SVID is live
(every call authenticates with it) and `drain` before the listeners close (deregister, so
peers stop picking this instance). `view` is what ``/readyz`` and ``/policies`` show.
"""

from __future__ import annotations

import functools
from typing import Any, final

import trio
from prometheus_client import Gauge

from mesh_ca.control.wire import RegisterRequest
from meshgate.clock import Clock
from sidecar.config import SidecarConfig
from sidecar.control.client import ControlClient
from sidecar.control.discovery import DiscoveryStatus, watch_endpoints
from sidecar.control.policies import CentralPolicies
from sidecar.control.registration import RegistrationStatus, deregister, run_registration
from sidecar.identity.credentials import CredentialStore
from sidecar.observe.metrics import SidecarMetrics
from sidecar.outbound.endpoints import EndpointTable, table_for
from sidecar.policy.live import LivePolicies

__all__ = ["ControlPlane"]


@final
class ControlPlane:
    def __init__(
        self,
        config: SidecarConfig,
        store: CredentialStore,
        clock: Clock,
        policies: LivePolicies | None,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        assert config.control_plane is not None
        assert config.identity.state_dir is not None  # CA mode: checked by the config
        self.config = config
        self.settings = config.control_plane
        self.clock = clock
        self.client = ControlClient([str(a) for a in config.identity.ca_addresses], store, clock)
        self.tables: dict[int, EndpointTable] = {}
        self.discovery: dict[int, DiscoveryStatus] = {}
        for index, out in enumerate(config.outbound):
            if out.discovered:
                self.tables[index] = table_for(out)
                self.discovery[index] = DiscoveryStatus(out.service)
        inbound = config.inbound
        self.registration: RegistrationStatus | None = None
        if inbound is not None and self.settings.register_inbound:
            advertised = inbound.advertised
            assert advertised is not None  # a wildcard without advertise: config error
            self.registration = RegistrationStatus(
                RegisterRequest(
                    service=inbound.service, address=str(advertised), protocol=inbound.protocol
                )
            )
        self._registering = trio.CancelScope()
        self.central: CentralPolicies | None = None
        central = config.policy is not None and config.policy.source == "control-plane"
        if policies is not None and central:
            assert inbound is not None  # checked by the config
            self.central = CentralPolicies(
                policies,
                inbound.service,
                config.identity.state_dir,
                self.settings,
                clock,
                self.client,
            )
        if metrics is not None:
            self._metrics(metrics)

    def table(self, index: int) -> EndpointTable | None:
        """The discovered endpoint set of ``outbound[index]`` (None: static endpoints)."""
        return self.tables.get(index)

    async def load_persisted(self) -> None:
        if self.central is not None:
            await self.central.load_persisted()

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every loop; each call needs the sidecar's SVID, so call this once it is live."""
        retry = self.settings.retry_max_seconds
        wait = self.settings.watch_wait_seconds
        if self.registration is not None:
            nursery.start_soon(
                functools.partial(self._register, self.registration, retry_max_seconds=retry)
            )
        for index, table in self.tables.items():
            nursery.start_soon(
                functools.partial(
                    watch_endpoints,
                    self.client,
                    self.config.outbound[index],
                    table,
                    self.discovery[index],
                    self.clock,
                    wait_seconds=wait,
                    retry_max_seconds=retry,
                )
            )
        if self.central is not None:
            nursery.start_soon(self.central.run)

    async def _register(self, status: RegistrationStatus, *, retry_max_seconds: float) -> None:
        with self._registering:
            if self.central is not None:  # not before it can authorize a single request
                status.state = "waiting_for_policies"
                await self.central.enforcing.wait()
            await run_registration(
                self.client, status, self.clock, retry_max_seconds=retry_max_seconds
            )

    async def drain(self) -> None:
        """Stop renewing, then deregister (at most a moment's wait), so peers stop picking
        this instance before its listener closes."""
        self._registering.cancel()  # a renewal after this would put it back in the set
        if self.registration is not None and await deregister(
            self.client, self.registration, self.clock
        ):
            # Watchers hear within milliseconds; the grace lets requests already routed
            # here arrive while the listener still accepts them.
            await trio.sleep(self.settings.deregister_grace_seconds)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.client.aclose()

    def view(self) -> dict[str, Any]:
        now = self.clock.now()
        tnow = trio.current_time()
        return {
            "registration": self.registration.view(now) if self.registration else None,
            "discovery": [
                {**self.discovery[i].view(), **self.tables[i].view(tnow)} for i in self.tables
            ],
            "policies": self.central.view() if self.central else None,
        }

    def _metrics(self, metrics: SidecarMetrics) -> None:
        registry = metrics.registry
        if self.registration is not None:
            registration = self.registration
            Gauge(
                "meshgate_control_plane_registered",
                "1 while the [inbound] listener holds a registration lease, else 0.",
                registry=registry,
            ).set_function(
                lambda: float(
                    registration.lease is not None
                    and registration.lease.expires_at > self.clock.now()
                )
            )
        if self.tables:
            endpoints = Gauge(
                "meshgate_control_plane_endpoints",
                "Endpoints discovered for an outbound service (dialable ones).",
                ["destination_service"],
                registry=registry,
            )
            for index, table in self.tables.items():
                endpoints.labels(self.config.outbound[index].service).set_function(
                    functools.partial(lambda t: float(len(t.endpoints)), table)
                )
        central_set = self.central
        if central_set is not None:
            central = central_set
            Gauge(
                "meshgate_policy_control_plane_version",
                "Version of the control plane's policy set enforced now (0: none).",
                registry=registry,
            ).set_function(lambda: float(central.version))
            Gauge(
                "meshgate_policy_control_plane_stale",
                "1 when no policy watch answer came for stale_after_seconds (or none yet): "
                "the last good set is enforced but may be out of date.",
                registry=registry,
            ).set_function(lambda: float(central.stale()))
            Gauge(
                "meshgate_policy_control_plane_age_seconds",
                "Seconds since the control plane last answered a policy watch (-1: never).",
                registry=registry,
            ).set_function(lambda: _or_minus_one(central.stale_seconds()))


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value
