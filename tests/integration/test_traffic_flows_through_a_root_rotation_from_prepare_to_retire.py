"""Traffic sees no error through a root rotation: prepare, activate, retire by the operator.

CA with 30 s SVIDs, two sidecars (frontend -> orders, tcp) polling every second, traffic
over new and long-lived connections the whole time:
1. `mesh-ca root prepare`: the new root and its intermediate are published;
2. once `mesh-ca status` shows both sidecars holding that trust material (each reports its
   bundle sequence over mTLS), `mesh-ca root activate` succeeds without --force;
3. both sidecars renew onto leaves of the new root while the other may still hold an old one;
4. `mesh-ca root retire` is refused while leaves of the old root are unexpired, then
   succeeds, and both sidecars take the bundle without the old root.
The audit log holds each step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.integration.ca_mesh import CertWatch, bootstrap_pair, init_ca, serving, wait_for
from tests.integration.rotation import (
    SIDECAR_POLL,
    audit_actions,
    ca_status,
    short_rotation,
    try_mesh_ca,
)
from tests.integration.traffic import Traffic, long_lived_connections, new_connections
from tests.procs import EchoApp, running_sidecar

pytestmark = pytest.mark.integration


async def test_root_prepare_activate_and_retire_fail_no_request(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", leaf_ttl="30s")
    short_rotation(ca, intermediates=False)
    ca_dir = str(ca.path)
    app, traffic = EchoApp(), Traffic()

    async def root(action: str) -> tuple[bool, str]:
        return await trio.to_thread.run_sync(try_mesh_ca, "root", action, "--dir", ca_dir)

    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        with serving(ca, tmp_path / "ca.log") as server:
            pair = bootstrap_pair(
                ca, server, tmp_path, app.port, a_identity=SIDECAR_POLL, b_identity=SIDECAR_POLL
            )
            with (
                running_sidecar(pair.b_config, pair.b_admin) as b,
                running_sidecar(pair.a_config, pair.a_admin) as a,
            ):
                watch = CertWatch((a, b))
                await watch.read()
                status: dict[str, object] = {}

                async def both_hold_the_current_sequence() -> bool:
                    status.update(await ca_status(ca.path))
                    return status["active_workloads"] == 2 and status["workloads_behind"] == []

                async with trio.open_nursery() as loops:
                    loops.start_soon(watch.run)
                    loops.start_soon(new_connections, pair.a_outbound, traffic)
                    loops.start_soon(long_lived_connections, pair.a_outbound, traffic, watch)
                    await wait_for("both sidecars", both_hold_the_current_sequence, timeout=30)

                    ok, out = await root("prepare")
                    assert ok, out
                    prepared = (await ca_status(ca.path))["sequence"]
                    await wait_for(
                        "both sidecars holding the prepared root",
                        both_hold_the_current_sequence,
                        timeout=30,
                    )
                    assert status["sequence"] == prepared

                    ok, out = await root("activate")
                    assert ok, out
                    activated = {view.serial for view in watch.latest}

                    async def both_renewed() -> bool:
                        return all(view.serial not in activated for view in watch.latest)

                    await wait_for("both sidecars renewed", both_renewed, timeout=30)
                    ok, refusal = await root("retire")
                    assert not ok
                    assert "valid until" in refusal, refusal

                    async def retired() -> bool:
                        done, _ = await root("retire")
                        return done

                    await wait_for("the old root retired", retired, timeout=60, every=2.0)
                    await wait_for(
                        "both sidecars holding the bundle without the old root",
                        both_hold_the_current_sequence,
                        timeout=30,
                    )
                    await trio.sleep(2)  # traffic on the retired bundle for a moment
                    loops.cancel_scope.cancel()

                assert traffic.errors == []
                assert traffic.new_ok >= 100, traffic
                assert traffic.long_ok >= 50, traffic
                final = await ca_status(ca.path)
                assert [r["slot"] for r in final["roots"]] == ["active"], final
                assert len(final["intermediates"]) == 1, final
                actions = await audit_actions(ca.path)
                assert actions == ["seed", "root prepare", "root activate", "root retire"]
                for view in watch.latest:
                    assert view.renewal_failures == 0, view
                assert a.stop() == 0
                assert b.stop() == 0
        nursery.cancel_scope.cancel()
