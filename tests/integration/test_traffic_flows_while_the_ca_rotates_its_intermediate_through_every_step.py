"""Traffic sees no error while the CA rotates its intermediate: prepare, activate, retire.

CA with 30 s SVIDs and 60 s intermediates (`tests/integration/rotation.py`), two sidecars
(frontend -> orders, tcp) that bootstrap from it and poll every second, traffic over new
and long-lived connections the whole time. The test runs until the CA's audit log shows
two activations and a retirement; by then both sidecars have renewed onto leaves of the
new intermediates, while their peer still held leaves of the old one, both ways.

Without the published intermediates (sidecars learning intermediates only from their own
chain) a sidecar still on the old intermediate refuses a peer whose leaf comes from the
new one (unknown_ca), until it renews itself: errors here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.ca_mesh import CertWatch, bootstrap_pair, init_ca, serving, wait_for
from tests.integration.rotation import SIDECAR_POLL, audit_actions, ca_status, short_rotation
from tests.integration.traffic import Traffic, long_lived_connections, new_connections
from tests.procs import EchoApp, running_sidecar

pytestmark = pytest.mark.integration


async def test_prepare_activate_and_retire_of_intermediates_fail_no_request(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca", leaf_ttl="30s")
    short_rotation(ca)
    app, traffic = EchoApp(), Traffic()
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
                seen: list[str] = []

                async def rotated_through_every_step() -> bool:
                    seen[:] = await audit_actions(ca.path)
                    return (
                        seen.count("intermediate activate") >= 2 and "intermediate retire" in seen
                    )

                async with trio.open_nursery() as loops:
                    loops.start_soon(watch.run)
                    loops.start_soon(new_connections, pair.a_outbound, traffic)
                    loops.start_soon(long_lived_connections, pair.a_outbound, traffic, watch)
                    await wait_for(
                        "two activations and a retirement",
                        rotated_through_every_step,
                        timeout=150,
                        every=1.0,
                    )
                    loops.cancel_scope.cancel()

                assert traffic.errors == []
                assert traffic.new_ok >= 100, traffic
                assert traffic.long_ok >= 100, traffic
                assert seen[0] == "seed"
                assert seen.count("intermediate prepare") >= 2, seen
                # Each sidecar reports the new trust sequence at its next poll (1 s), so a
                # report may still be on its way when the retirement shows in the log.
                status: dict[str, Any] = {}

                async def none_behind() -> bool:
                    status.update(await ca_status(ca.path))
                    return not status["workloads_behind"]

                await wait_for("both sidecars to report the latest trust", none_behind, timeout=20)
                assert {s["slot"] for s in status["intermediates"]} >= {"active"}
                for view in watch.latest:
                    assert view.renewal_failures == 0, view
                assert a.stop() == 0
                assert b.stop() == 0
        nursery.cancel_scope.cancel()
