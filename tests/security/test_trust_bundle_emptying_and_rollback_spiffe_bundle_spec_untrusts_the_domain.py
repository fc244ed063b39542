"""Attack class: trust-bundle manipulation (emptied key set, sequence rollback, duplicate
JSON members).

Advisory: no CVE; the public rules are the SPIFFE X509-SVID spec section 6.2 (no
``x509-svid`` entry: the trust domain does not support X509-SVIDs) and the SPIFFE Trust
Domain and Bundle spec section 4.1.1 (``spiffe_sequence`` increases with every change).
Finding 9 of meshgate issue 12: an empty key set kept the previous roots in force, so a
CA that withdraws its authorities (e.g. after a compromise) was not obeyed.

Against a real `mesh-sidecar` in CA mode that polls a bundle endpoint every second (a
stand-in CA in this process serves /v1/bundle and /v1/revocations over TLS, as the CA
does): while the bundle holds the root, a verified peer's connection works; a replayed
older bundle and a document with duplicate members change nothing; once the bundle has
no X.509 authority the sidecar cuts the open connection and refuses new handshakes from
the trust domain, and the app sees only the first connection.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
import trio

from mesh_ca.server.identity import server_context
from meshgate.transport.mtls import mesh_context
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, free_port, running_sidecar, write_config

pytestmark = pytest.mark.integration


class BundleEndpoint:
    """A stand-in CA: serves `document` at /v1/bundle and no revocations, over TLS."""

    def __init__(self, pki: Pki) -> None:
        ca = pki.leaf(f"spiffe://{pki.trust_domain.name}/mesh/ca")
        self.context = server_context(ca.chain_pem(), ca.key_pem(), pki.bundles)
        self.document: bytes = b""
        self.port = 0
        self.bundle_requests = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_ssl_over_tcp_listeners(0, self.context, host="127.0.0.1")
        transport = listeners[0].transport_listener
        assert isinstance(transport, trio.SocketListener)
        self.port = transport.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1]
            if path == b"/v1/bundle":
                self.bundle_requests += 1
                body = self.document
            else:
                body = b'{"spiffe_ids":[],"serials":[],"sequence":0,"updated_at":null}'
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            await stream.send_all(head + body)
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serving(self, document: bytes) -> None:
        """Serve `document` and wait (with a deadline) until the sidecar fetched it twice."""
        self.document = document
        seen = self.bundle_requests
        with trio.fail_after(20):
            while self.bundle_requests < seen + 2:
                await trio.sleep(0.05)


async def _connect(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
    with trio.fail_after(10):
        await stream.do_handshake()
    return stream


async def _echo(stream: trio.SSLStream[trio.SocketStream], payload: bytes) -> bytes:
    with trio.fail_after(10):
        await stream.send_all(payload)
        return bytes(await stream.receive_some(65536))


async def _refused(port: int, context: ssl.SSLContext) -> bool:
    """True if a new connection is refused, during or right after the handshake."""
    try:
        stream = await _connect(port, context)
        try:
            await _echo(stream, b"three")
            await _echo(stream, b"four")  # the refusal may arrive after the handshake
        finally:
            await trio.aclose_forcefully(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return True
    return False


async def test_an_emptied_bundle_untrusts_the_domain_and_a_rollback_changes_nothing(
    tmp_path: Path,
) -> None:
    pki, app = Pki(), EchoApp()
    own_id, peer_id = pki.spiffe_id("shop", "orders"), pki.spiffe_id("shop", "frontend")
    state = tmp_path / "state"
    own = pki.leaf(own_id)
    own.write(state)
    (state / "bundle.pem").write_bytes(pki.bundle_pem())
    (tmp_path / "bundle.pem").write_bytes(pki.bundle_pem())
    peer = pki.leaf(peer_id)
    peer_context = mesh_context("client", peer.chain_pem(), peer.key_pem(), pki.bundles)
    current = {**pki.bundle.to_spiffe_json(), "spiffe_sequence": 10}
    endpoint = BundleEndpoint(pki)
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        await nursery.start(endpoint.serve)
        endpoint.document = json.dumps(current).encode()
        port, admin = free_port(), free_port()
        config = write_config(
            tmp_path / "b.toml",
            {
                "identity": {
                    "spiffe_id": str(own_id),
                    "bundle_file": str(tmp_path / "bundle.pem"),
                    "ca_addresses": [f"127.0.0.1:{endpoint.port}"],
                    "state_dir": str(state),
                    "poll_interval_seconds": 1,
                },
                "inbound": {
                    "listen": f"127.0.0.1:{port}",
                    "app": f"127.0.0.1:{app.port}",
                    "service": "orders",
                    "allowed_ids": [str(peer_id)],
                },
                "admin": {"listen": f"127.0.0.1:{admin}"},
            },
        )
        with running_sidecar(config, admin) as sidecar:
            await endpoint.serving(json.dumps(current).encode())
            held = await _connect(port, peer_context)
            assert await _echo(held, b"one") == b"one"
            # A replayed older sequence, and duplicate members, are refused: still trusted.
            await endpoint.serving(json.dumps({"keys": [], "spiffe_sequence": 9}).encode())
            await endpoint.serving(b'{"keys": [], "keys": [], "spiffe_sequence": 11}')
            assert await _echo(held, b"two") == b"two"
            # No X.509 authority any more: the open connection is cut, new ones refused.
            await endpoint.serving(json.dumps({"keys": [], "spiffe_sequence": 12}).encode())
            with trio.fail_after(20):
                try:
                    while await held.receive_some(65536):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await trio.aclose_forcefully(held)
            assert await _refused(port, peer_context)
            log = sidecar.log()
            assert "went back from 10 to 9" in log
            assert "duplicate JSON member" in log
            assert "has no X.509 authority" in log
        assert app.connections == 1
        nursery.cancel_scope.cancel()
