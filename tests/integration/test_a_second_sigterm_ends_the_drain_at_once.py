"""A second SIGTERM (or SIGINT) during a drain stops waiting for open connections: the
sidecar closes them and exits 0 at once instead of after ``drain_timeout_seconds``."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, running_sidecar

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_ends_the_drain(tmp_path: Path, second: signal.Signals) -> None:
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        pair = sidecar_pair(Pki(), tmp_path, app.port, drain_timeout_seconds=600)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            stream = await trio.open_tcp_stream("127.0.0.1", pair.a_outbound)
            await stream.send_all(b"open ")
            with trio.fail_after(10):
                assert await stream.receive_some() == b"open "
            b.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                while '"open_connections":1' not in b.log():  # draining, one left open
                    await trio.sleep(0.05)
            assert b.process.poll() is None  # it waits for the open connection
            b.process.send_signal(second)
            # Far below the 600 s drain timeout: only the second signal can end it this soon.
            assert await trio.to_thread.run_sync(b.process.wait, 30) == 0
            assert "second stop signal" in b.log()
            assert "sidecar stopped" in b.log()
            await stream.aclose()
        nursery.cancel_scope.cancel()
