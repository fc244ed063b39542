"""app → sidecar A (outbound) ══mTLS══ sidecar B (inbound) → echo app, and back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, exchange, running_sidecar

pytestmark = pytest.mark.integration


async def test_bytes_flow_both_ways_with_half_close(tmp_path: Path) -> None:
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        pair = sidecar_pair(Pki(), tmp_path, app.port)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            assert await exchange(pair.a_outbound, b"hello mesh") == b"hello mesh"
            big = bytes(range(256)) * 4096  # 1 MiB, many TLS records
            assert await exchange(pair.a_outbound, big) == big
            assert app.connections == 2
            status, cert = a.get("/certificate")
            assert status == 200
            assert cert["spiffe_id"] == str(pair.a_id)
            assert b.get("/config")[1]["inbound"]["allowed_ids"] == [str(pair.a_id)]
            assert '"peer_id":"' + str(pair.a_id) + '"' in b.log()  # its access record
            assert a.stop() == 0
            assert b.stop() == 0
        nursery.cancel_scope.cancel()
