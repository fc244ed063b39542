"""No certificate, another CA's certificate, or an unlisted ID: the app sees nothing."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio

from meshgate.transport.mtls import client_context, mesh_context
from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, running_sidecar

pytestmark = pytest.mark.integration


async def _try(port: int, context: ssl.SSLContext) -> bytes:
    """Handshake and send; whatever comes back (alert, EOF, reset) counts as nothing."""
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
    received = b""
    with trio.fail_after(10):
        try:
            await stream.do_handshake()
            await stream.send_all(b"let me in")
            received = bytes(await stream.receive_some())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)
    return received


async def test_refused_clients_get_nothing_and_the_app_sees_no_connection(tmp_path: Path) -> None:
    pki, stranger = Pki(), Pki()
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        pair = sidecar_pair(pki, tmp_path, app.port)
        with running_sidecar(pair.b_config, pair.b_admin) as b:
            no_cert = client_context(pki.bundles)
            foreign = stranger.leaf(pair.a_id)  # right ID, wrong CA
            other_ca = mesh_context("client", foreign.chain_pem(), foreign.key_pem(), pki.bundles)
            not_listed = pki.leaf(pki.spiffe_id("shop", "intruder"))
            unlisted = mesh_context(
                "client", not_listed.chain_pem(), not_listed.key_pem(), pki.bundles
            )
            for context in (no_cert, other_ca, unlisted):
                assert await _try(pair.b_inbound, context) == b""
            assert app.connections == 0
            log = b.log()
            assert '"reason":"no_client_cert"' in log
            assert '"reason":"unknown_ca"' in log
            assert '"decision":"deny"' in log
            # A listed peer does get through, so the refusals above were not an outage.
            allowed = pki.leaf(pair.a_id)
            good = mesh_context("client", allowed.chain_pem(), allowed.key_pem(), pki.bundles)
            assert await _try(pair.b_inbound, good) == b"let me in"
            assert app.connections == 1
        nursery.cancel_scope.cancel()
