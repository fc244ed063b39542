"""`mesh-ca revoke --spiffe-id` of a client: the server sidecar closes its open connection
and refuses its new ones, within a poll interval, long before its SVID would expire.

Both sidecars bootstrap from `mesh-ca serve` (1 h SVIDs). B, the server side, polls the
CA's revocations every second (``[identity] poll_interval_seconds = 1``); A keeps the 30 s
default, so what happens within a few seconds is B's doing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.integration.ca_mesh import A_ID, bootstrap_pair, init_ca, mesh_ca, serving, wait_for
from tests.integration.traffic import nothing_gets_through
from tests.procs import EchoApp, Sidecar, running_sidecar

pytestmark = pytest.mark.integration


def _inbound_reasons(sidecar: Sidecar) -> list[str]:
    return [
        str(record["reason"])
        for line in sidecar.log().splitlines()
        if '"protocol":"tcp"' in line and (record := json.loads(line))["direction"] == "inbound"
    ]


async def test_revoking_the_client_closes_its_connection_and_refuses_new_ones(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca")
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        with serving(ca, tmp_path / "ca.log") as server:
            pair = bootstrap_pair(
                ca, server, tmp_path, app.port, b_identity={"poll_interval_seconds": 1}
            )
            with (
                running_sidecar(pair.b_config, pair.b_admin) as b,
                running_sidecar(pair.a_config, pair.a_admin) as a,
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", pair.a_outbound)
                await stream.send_all(b"before revocation")
                with trio.fail_after(10):
                    assert await stream.receive_some() == b"before revocation"

                await trio.to_thread.run_sync(
                    mesh_ca, "revoke", "--dir", str(ca.path), "--spiffe-id", str(A_ID)
                )
                with trio.fail_after(5):  # a 1 s poll, the CA's answer and the close
                    try:
                        while await stream.receive_some():
                            pass
                    except trio.BrokenResourceError:
                        pass  # reset rather than closed: closed either way
                await stream.aclose()

                await nothing_gets_through(pair.a_outbound, app)

                async def refusal_logged() -> bool:
                    # the open connection closed and the refused handshake both say why
                    return _inbound_reasons(b).count("revoked") >= 2

                await wait_for("B's record of the refused handshake", refusal_logged, timeout=5)
                assert a.stop() == 0
                assert b.stop() == 0
        nursery.cancel_scope.cancel()
