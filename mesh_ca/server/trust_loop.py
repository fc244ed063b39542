"""The CA server's trust-state loop (trio shell over `mesh_ca.rotation.keeper`).

Every ``rotation.check_interval_seconds`` each replica reloads the trust state from the
store, performs the automatic step that is due (if ``rotation.enabled``; the store's
compare-and-set lets exactly one replica do each step) and, when the state changed, swaps
in a CA service for the new slots and issues itself a server SVID from the new signer and
with the new trust anchors. A failure is logged and counted, and the current state keeps
serving: a background loop logs and carries on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from mesh_ca.ca_dir import LoadedCa
from mesh_ca.rotation import RotationError, TrustState
from mesh_ca.rotation.config import RotationConfig
from mesh_ca.rotation.keeper import Loaded, load_state, published_bundle, run_due_step, signer_of
from mesh_ca.server.core import CaAuthority
from mesh_ca.server.http import CaHttpServer
from mesh_ca.server.identity import issue_server_identity
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.store import StoreError
from mesh_ca.store.trust import TrustStore
from meshgate.clock import Clock

__all__ = ["TrustKeeper", "authority_for"]

log = logging.getLogger("mesh_ca.rotation")


def authority_for(
    base: CaAuthority, state: TrustState, ca: LoadedCa, passphrase: bytes | None
) -> CaAuthority:
    """`base` signing with the active slot and publishing every slot."""
    return dataclasses.replace(
        base, signer=signer_of(state, ca, passphrase), bundle=published_bundle(state, ca)
    )


def show_slots(metrics: CaMetrics, state: TrustState) -> None:
    slots = [
        ("root", r.state.value, r.fingerprint[:16], r.cert.not_valid_after_utc) for r in state.roots
    ]
    slots += [
        ("intermediate", i.state.value, i.fingerprint[:16], i.cert.not_valid_after_utc)
        for i in state.intermediates
    ]
    metrics.set_slots(state.sequence, slots)


@dataclass
class TrustKeeper:
    ca: LoadedCa
    trust: TrustStore
    config: RotationConfig
    passphrase: bytes | None
    replica: str
    loaded: Loaded

    @classmethod
    def open(
        cls, ca: LoadedCa, trust: TrustStore, passphrase: bytes | None, replica: str, now: datetime
    ) -> TrustKeeper:
        """Blocking: the stored trust state (seeded on first use)."""
        loaded = load_state(trust, ca, now)
        return cls(ca, trust, ca.config.rotation, passphrase, replica, loaded)

    @property
    def automatic(self) -> bool:
        """Automatic intermediate steps: enabled, and the keys are files (a PKCS#11 token's
        intermediate is not rotated yet; those CAs rotate by hand)."""
        return self.config.enabled and self.ca.config.keys.backend == "file"

    def mesh_facts(self) -> dict[str, Any]:
        """The slots for the admin listener's mesh view (what `mesh-ca check` reads)."""
        state = self.loaded.state
        slots = [("root", r.state, r.fingerprint, r.cert) for r in state.roots]
        slots += [("intermediate", i.state, i.fingerprint, i.cert) for i in state.intermediates]
        return {
            "trust_sequence": state.sequence,
            "rotation_automatic": self.automatic and not state.root_rotation_in_progress,
            "slots": [
                {
                    "kind": kind,
                    "slot": slot.value,
                    "id": fp[:16],
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
                for kind, slot, fp, cert in slots
            ],
        }

    def authority(self, base: CaAuthority) -> CaAuthority:
        return authority_for(base, self.loaded.state, self.ca, self.passphrase)

    def _tick(self, now: datetime) -> tuple[Loaded, str | None]:
        """Blocking: reload, run the due step; (the state now, the step done or None)."""
        loaded = load_state(self.trust, self.ca, now)
        if not self.automatic:
            return loaded, None
        actor = f"replica {self.replica or '-'}"
        step = run_due_step(
            self.trust, self.ca, loaded, now, self.config.policy, self.passphrase, actor
        )
        if step is None:
            return loaded, None
        return load_state(self.trust, self.ca, now), step.kind.value

    async def run(self, server: CaHttpServer, clock: Clock) -> None:
        metrics = server.service.metrics
        show_slots(metrics, self.loaded.state)
        while True:
            await trio.sleep(self.config.check_interval_seconds)
            await self.check(server, clock)

    async def check(self, server: CaHttpServer, clock: Clock) -> None:
        metrics = server.service.metrics
        try:
            loaded, step = await trio.to_thread.run_sync(self._tick, clock.now())
        except (RotationError, StoreError) as exc:
            metrics.rotation_steps.labels("check", "error").inc()
            log.error(json.dumps({"event": "rotation_check_failed", "error": str(exc)}))
            return
        if step is not None:
            metrics.rotation_steps.labels(step, "ok").inc()
        if loaded.version == self.loaded.version:
            return
        await self.apply(server, loaded, clock)

    async def apply(self, server: CaHttpServer, loaded: Loaded, clock: Clock) -> None:
        """Serve `loaded`: new service (signer, bundle) and a server SVID of the new signer."""
        metrics = server.service.metrics
        try:
            authority = authority_for(
                server.service.authority, loaded.state, self.ca, self.passphrase
            )
            identity = await trio.to_thread.run_sync(
                issue_server_identity, authority, server.service.store, clock.now()
            )
        except (RotationError, StoreError) as exc:
            metrics.rotation_steps.labels("apply", "error").inc()
            log.error(json.dumps({"event": "trust_state_not_applied", "error": str(exc)}))
            return
        # Made and swapped in with no await between: what other loops publish into the
        # current service (the federated bundles) is carried over, never lost.
        server.replace_service(server.service.with_authority(authority))
        server.identity = identity
        self.loaded = loaded
        metrics.set_expiry("intermediate", authority.signer.not_after)
        metrics.set_expiry("server", identity.not_after)
        show_slots(metrics, loaded.state)
        log.info(
            json.dumps(
                {
                    "event": "trust_state_applied",
                    "sequence": loaded.state.sequence,
                    "signer": loaded.state.active.fingerprint[:16],
                }
            )
        )
