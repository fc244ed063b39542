"""The CA down for longer than a rotation interval (but less than the TTL) breaks no traffic.

Two sidecars bootstrap from `mesh-ca serve` (40 s SVIDs: a 50 s lifetime with notBefore
backdated 10 s, so a rotation falls 10 to 20 s after issuance). Right after they start,
the CA is stopped (SIGTERM) for 21 s: longer than the longest possible rotation interval,
so both sidecars try to renew while it is down, and shorter than the TTL. Traffic over new
and long-lived connections keeps flowing with zero errors and both stay ready; both log
and count the failed renewals; the CA is restarted from the same directory on the same
port and both sidecars renew before their SVIDs expire.
"""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from tests.integration.ca_mesh import (
    CertWatch,
    admin,
    bootstrap_pair,
    init_ca,
    metrics_text,
    serving,
    wait_for,
)
from tests.integration.traffic import Traffic, long_lived_connections, new_connections
from tests.procs import EchoApp, Sidecar, running_sidecar

pytestmark = pytest.mark.integration

LEAF_TTL_SECONDS = 40
LONGEST_ROTATION_INTERVAL_SECONDS = 0.6 * (LEAF_TTL_SECONDS + 10) - 10  # 20 s
OUTAGE_SECONDS = LONGEST_ROTATION_INTERVAL_SECONDS + 1
_CA_UNAVAILABLE = re.compile(
    r'^meshgate_certificate_rotations_total\{kind="rotation",result="ca_unavailable"\} (\S+)$',
    re.M,
)


async def _stay_ready(sidecars: tuple[Sidecar, ...], traffic: Traffic) -> None:
    while True:
        for sidecar in sidecars:
            status, view = await admin(sidecar, "/readyz")
            if status != 200:
                traffic.error(f"admin port {sidecar.admin_port} /readyz {status}: {view}")
        await trio.sleep(0.5)


async def test_no_request_fails_while_the_ca_is_down_and_renewal_resumes_when_it_returns(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca", leaf_ttl=f"{LEAF_TTL_SECONDS}s")
    app, traffic = EchoApp(), Traffic()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        with serving(ca, tmp_path / "ca.log") as server:
            pair = bootstrap_pair(ca, server, tmp_path, app.port)
            with (
                running_sidecar(pair.b_config, pair.b_admin) as b,
                running_sidecar(pair.a_config, pair.a_admin) as a,
            ):
                watch = CertWatch((a, b))
                async with trio.open_nursery() as loops:
                    loops.start_soon(watch.run)
                    loops.start_soon(new_connections, pair.a_outbound, traffic)
                    loops.start_soon(long_lived_connections, pair.a_outbound, traffic, watch)
                    loops.start_soon(_stay_ready, (a, b), traffic)

                    before = await watch.read()
                    assert all(view.rotated == 0 for view in before), "bootstrapped just now"
                    server.process.send_signal(signal.SIGTERM)
                    assert await trio.to_thread.run_sync(server.process.wait, 15) == 0
                    stopped = trio.current_time()

                    async def both_failed_to_renew() -> bool:
                        return all(view.renewal_failures >= 1 for view in watch.latest)

                    await wait_for(
                        "renewal failures in both sidecars",
                        both_failed_to_renew,
                        timeout=OUTAGE_SECONDS,
                    )
                    await trio.sleep_until(stopped + OUTAGE_SECONDS)
                    during = await watch.read()
                    assert [v.serial for v in during] == [v.serial for v in before]
                    assert all(v.not_after > datetime.now(UTC) for v in during), "not expired"

                    with serving(ca, tmp_path / "ca-again.log", listen=server.address):

                        async def both_renewed() -> bool:
                            return all(view.rotated >= 1 for view in watch.latest)

                        await wait_for("renewal after the CA's return", both_renewed, timeout=20)
                        await trio.sleep(1)  # traffic on the renewed SVIDs too
                        loops.cancel_scope.cancel()

                assert traffic.errors == []
                assert traffic.new_ok >= 100, traffic
                assert traffic.long_ok >= 100, traffic
                after = await watch.read()
                for old, new, sidecar in zip(before, after, (a, b), strict=True):
                    assert new.serial != old.serial
                    assert new.not_after > old.not_after
                    assert new.rotations.get("ca_unavailable", 0) >= 1, new
                    counted = _CA_UNAVAILABLE.search(await metrics_text(sidecar))
                    assert counted is not None
                    assert float(counted.group(1)) >= 1
                    assert "rotation: CA unavailable" in sidecar.log()
                assert a.stop() == 0
                assert b.stop() == 0
        nursery.cancel_scope.cancel()
