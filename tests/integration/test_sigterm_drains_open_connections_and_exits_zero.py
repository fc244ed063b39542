"""SIGTERM: stop accepting at once, let the open connection finish, exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, exchange, running_sidecar

pytestmark = pytest.mark.integration


async def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        pair = sidecar_pair(Pki(), tmp_path, app.port, drain_timeout_seconds=10)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            stream = await trio.open_tcp_stream("127.0.0.1", pair.a_outbound)
            await stream.send_all(b"before ")
            with trio.fail_after(10):
                assert await stream.receive_some() == b"before "
            a.process.send_signal(signal.SIGTERM)
            b.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                while "draining" not in a.log() or "draining" not in b.log():
                    await trio.sleep(0.05)
            # New connections are refused while the open one keeps working.
            with pytest.raises(OSError, match="all attempts to connect"):
                await exchange(pair.a_outbound, b"new")
            await stream.send_all(b"after")
            await stream.send_eof()
            received = b""
            with trio.fail_after(10):
                while data := await stream.receive_some():
                    received += data
            assert received == b"after"
            await stream.aclose()
            assert await trio.to_thread.run_sync(a.process.wait, 15) == 0
            assert await trio.to_thread.run_sync(b.process.wait, 15) == 0
            assert "sidecar stopped" in a.log()
        nursery.cancel_scope.cancel()
