"""A sidecar given a join token bound to another SPIFFE ID does not burn it: the CA refuses
(``token_wrong_id``, logged with both IDs) without consuming it, the sidecar says why in its
log and ``/readyz``, and once ``identity.spiffe_id`` is corrected (same state directory,
same token file) the sidecar bootstraps with that very token."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mesh_ca.tokens import parse_token
from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN, make_ca
from tests.integration.ca_mesh import mesh_ca, serving
from tests.procs import free_port, running_sidecar, started_sidecar, wait_readyz, write_config

pytestmark = pytest.mark.integration

ORDERS = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/orders")
PAYMENTS = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/payments")


def _sidecar(tmp: Path, spiffe_id: SpiffeId, ca_dir: Path, address: str, token: str) -> Any:
    tmp.mkdir(exist_ok=True)
    (tmp / "token").write_text(token + "\n")
    admin = free_port()
    config = {
        "identity": {
            "spiffe_id": str(spiffe_id),
            "bundle_file": str(ca_dir / "bundle.pem"),
            "ca_addresses": [address],
            "state_dir": str(tmp / "state"),
            "token_file": str(tmp / "token"),
        },
        "outbound": [
            {
                "listen": f"127.0.0.1:{free_port()}",
                "service": "inventory",
                "endpoints": [f"127.0.0.1:{free_port()}"],
                "spiffe_ids": [f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/inventory"],
            }
        ],
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    return write_config(tmp / "sidecar.toml", config), admin


def _outstanding(ca_dir: Path) -> list[dict[str, Any]]:
    status = json.loads(mesh_ca("status", "--dir", str(ca_dir), "--json"))
    return list(status["outstanding_tokens"])


def test_a_token_for_another_id_is_refused_and_stays_usable(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    token = mesh_ca("token", "create", "--dir", str(ca.path), "--spiffe-id", str(PAYMENTS)).strip()
    token_id, _ = parse_token(token)
    with serving(ca, tmp_path / "ca.log") as server:
        config, admin = _sidecar(tmp_path / "orders", ORDERS, ca.path, server.address, token)
        with started_sidecar(config, admin) as orders:
            body = wait_readyz(orders, "token_wrong_id")
            assert str(PAYMENTS) in body["reason"]
            assert f"identity.spiffe_id {ORDERS}" in body["reason"]
            assert "token_wrong_id" in orders.log()
            assert orders.stop() == 0

        def logged_refusals() -> list[dict[str, object]]:
            return [
                json.loads(line)
                for line in server.log().splitlines()
                if line.startswith("{") and "token_wrong_id" in line
            ]

        # The CA writes its access log in batches: wait for the line, with a deadline.
        deadline = time.monotonic() + 10
        while not (refusals := logged_refusals()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(refusals) == 1, server.log()
        assert refusals[0]["status"] == 403
        assert refusals[0]["spiffe_id"] == str(PAYMENTS)
        assert refusals[0]["expected_id"] == str(ORDERS)
        assert token not in server.log()  # the secret is never logged
        assert [t["spiffe_id"] for t in _outstanding(ca.path)] == [str(PAYMENTS)]
        assert _outstanding(ca.path)[0]["token_id"] == token_id

        # The operator fixes identity.spiffe_id and restarts: same state_dir, same token file.
        config, admin = _sidecar(tmp_path / "orders", PAYMENTS, ca.path, server.address, token)
        with running_sidecar(config, admin) as payments:
            status, cert = payments.get("/certificate")
            assert status == 200
            assert cert["spiffe_id"] == str(PAYMENTS)
        assert _outstanding(ca.path) == []
