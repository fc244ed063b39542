"""A sidecar whose SVID expired while the CA was down refuses mTLS both ways, reports
unready, and recovers by itself once the CA is back and a fresh join token is written.

B bootstraps from `mesh-ca serve` with a 30 s SVID (short to keep the suite fast); A has
static files from `mesh-ca issue --ttl 1h`, so only B expires. Each has an inbound in
front of its own echo app and an outbound to the other. The CA is stopped right after
B's bootstrap and stays down past B's notAfter: then A → B and B → A both get nothing
through (B neither accepts nor originates a handshake; fails closed) and neither app sees
a connection, while B's /readyz says 503. The CA is restarted on the same port; B cannot
renew an expired SVID, so a fresh token from `mesh-ca token create` goes into its token
file, and B bootstraps again, becomes ready, and traffic flows both ways.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.ca_mesh import (
    A_ID,
    B_ID,
    admin,
    bootstrap_identity,
    certificate,
    init_ca,
    mesh_ca,
    serving,
    wait_for,
    write_token,
)
from tests.integration.traffic import nothing_gets_through
from tests.procs import EchoApp, Sidecar, exchange, free_port, running_sidecar, write_config

pytestmark = pytest.mark.integration


def _config(
    path: Path,
    spiffe_id: object,
    identity: dict[str, Any],
    ports: dict[str, int],
    me: str,
    peer: str,
    peer_id: object,
) -> Path:
    return write_config(
        path,
        {
            "identity": {"spiffe_id": str(spiffe_id), **identity},
            "inbound": {
                "listen": f"127.0.0.1:{ports[me + '_in']}",
                "app": f"127.0.0.1:{ports[me + '_app']}",
                "service": me,
                "allowed_ids": [str(peer_id)],
            },
            "outbound": [
                {
                    "listen": f"127.0.0.1:{ports[me + '_out']}",
                    "service": peer,
                    "endpoints": [f"127.0.0.1:{ports[peer + '_in']}"],
                    "spiffe_ids": [str(peer_id)],
                }
            ],
            "admin": {"listen": f"127.0.0.1:{ports[me + '_admin']}"},
        },
    )


def _access_reasons(sidecar: Sidecar) -> set[tuple[str, str]]:
    """(direction, reason) of the access records in the sidecar's output."""
    found = set()
    for line in sidecar.log().splitlines():
        if '"protocol":"tcp"' in line:
            record = json.loads(line)
            found.add((record["direction"], str(record["reason"])))
    return found


async def test_expired_svid_refuses_both_ways_is_unready_then_recovers_with_a_fresh_token(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca", leaf_ttl="30s")
    mesh_ca(
        "issue",
        "--dir",
        str(ca.path),
        "--spiffe-id",
        str(A_ID),
        "--out",
        str(tmp_path / "a"),
        "--ttl",
        "1h",
    )
    a_identity = {
        "cert_file": str(tmp_path / "a" / "svid.pem"),
        "key_file": str(tmp_path / "a" / "svid.key"),
        "bundle_file": str(ca.path / "bundle.pem"),
    }
    a_app, b_app = EchoApp(), EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(a_app.serve)
        await nursery.start(b_app.serve)
        ports = {
            **{k: free_port() for k in ("a_in", "a_out", "a_admin", "b_in", "b_out", "b_admin")},
            "a_app": a_app.port,
            "b_app": b_app.port,
        }
        with serving(ca, tmp_path / "ca.log") as server:
            b_identity = bootstrap_identity(ca, server, B_ID, tmp_path / "b")
            a_config = _config(tmp_path / "a.toml", A_ID, a_identity, ports, "a", "b", B_ID)
            b_config = _config(tmp_path / "b.toml", B_ID, b_identity, ports, "b", "a", A_ID)
            with (
                running_sidecar(b_config, ports["b_admin"]) as b,
                running_sidecar(a_config, ports["a_admin"]) as a,
            ):
                assert await exchange(ports["a_out"], b"a to b") == b"a to b"
                assert await exchange(ports["b_out"], b"b to a") == b"b to a"
                assert (a_app.connections, b_app.connections) == (1, 1)

                server.process.send_signal(signal.SIGTERM)
                assert await trio.to_thread.run_sync(server.process.wait, 15) == 0
                expiry = (await certificate(b)).not_after

                async def b_unready() -> bool:
                    return (await admin(b, "/readyz"))[0] == 503

                seconds_left = (expiry - datetime.now(UTC)).total_seconds()
                await wait_for("B unready", b_unready, timeout=seconds_left + 10)
                assert datetime.now(UTC) >= expiry - timedelta(seconds=1), "not before expiry"
                assert "expired" in (await admin(b, "/readyz"))[1]["reason"]
                assert (await admin(a, "/readyz"))[0] == 200

                await nothing_gets_through(ports["a_out"], b_app)  # B does not accept
                await nothing_gets_through(ports["b_out"], a_app)  # B does not originate

                async def both_refusals_logged() -> bool:
                    # Written as B's handlers finish, maybe just after the client saw the close.
                    refused = {("inbound", "no_credentials"), ("outbound", "no_credentials")}
                    return refused <= _access_reasons(b)

                await wait_for(
                    "B's access records of both refusals", both_refusals_logged, timeout=5
                )

                async def b_asks_for_a_token() -> bool:
                    body = (await admin(b, "/readyz"))[1]
                    return bool(
                        body.get("code") == "svid_expired" and "join token" in body["reason"]
                    )

                # /readyz says what it needs (the next attempt after expiry finds no token).
                await wait_for("B's /readyz asking for a token", b_asks_for_a_token, timeout=15)

                with serving(ca, tmp_path / "ca-again.log", listen=server.address):

                    async def asked_for_a_token() -> bool:
                        # With the CA back and no token, B says what it needs before we give it.
                        stats = (await admin(b, "/certificate"))[1]["bootstraps"]
                        return bool(stats.get("no_token"))

                    await wait_for("B asking for a token", asked_for_a_token, timeout=15)
                    write_token(ca, B_ID, Path(b_identity["token_file"]))

                    async def b_ready() -> bool:
                        return (await admin(b, "/readyz"))[0] == 200

                    await wait_for("B ready again", b_ready, timeout=15)
                    view = await certificate(b)
                    assert view.not_after > expiry
                    bootstraps = (await admin(b, "/certificate"))[1]["bootstraps"]
                    assert bootstraps["ok"] == 2, bootstraps
                    assert bootstraps["no_token"] >= 1, bootstraps  # it said what it needed
                    assert "mesh-ca token create" in b.log()
                    assert await exchange(ports["a_out"], b"a to b again") == b"a to b again"
                    assert await exchange(ports["b_out"], b"b to a again") == b"b to a again"
                    assert (a_app.connections, b_app.connections) == (2, 2)
                    assert a.stop() == 0
                    assert b.stop() == 0
        nursery.cancel_scope.cancel()
