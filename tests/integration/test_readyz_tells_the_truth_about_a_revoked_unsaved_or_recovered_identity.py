"""``/readyz`` of a running sidecar tells the truth: unready once its own SPIFFE ID is
revoked, unready while its SVID cannot be saved to ``state_dir`` (a restart would need a new
token), and ready with no stale ``last_error`` once the CA it waited for comes up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN, CaServer, make_ca, serving_ca_dir
from tests.integration.ca_mesh import mesh_ca
from tests.procs import (
    free_port,
    running_sidecar,
    started_sidecar,
    wait_ready,
    wait_readyz,
    write_config,
)

pytestmark = pytest.mark.integration

ORDERS = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/orders")
SERVE = ("-m", "mesh_ca.cli", "serve")


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[CaServer]:
    with serving_ca_dir(make_ca(tmp_path / "ca"), tmp_path / "ca.log", argv=SERVE) as server:
        yield server


def _config(tmp: Path, ca_address: str, token: str, **identity: Any) -> tuple[Path, int]:
    admin = free_port()
    (tmp / "token").write_text(token + "\n")
    config = {
        "identity": {
            "spiffe_id": str(ORDERS),
            "bundle_file": str(tmp / "ca" / "bundle.pem"),
            "ca_addresses": [ca_address],
            "state_dir": str(tmp / "state"),
            "token_file": str(tmp / "token"),
            **identity,
        },
        "outbound": [
            {
                "listen": f"127.0.0.1:{free_port()}",
                "service": "payments",
                "endpoints": [f"127.0.0.1:{free_port()}"],
                "spiffe_ids": [f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/payments"],
            }
        ],
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    return write_config(tmp / "sidecar.toml", config), admin


def test_revoking_the_sidecars_own_id_makes_it_unready(tmp_path: Path, ca: CaServer) -> None:
    config, admin = _config(tmp_path, ca.address, ca.token(ORDERS), poll_interval_seconds=1)
    with running_sidecar(config, admin) as sidecar:
        mesh_ca("revoke", "--dir", str(ca.ca.path), "--spiffe-id", str(ORDERS))
        body = wait_readyz(sidecar, "own_id_revoked")
        assert body == {
            "ready": False,
            "code": "own_id_revoked",
            "reason": f"own SPIFFE ID {ORDERS} is revoked",
        }
        assert sidecar.get("/healthz")[0] == 200


def test_a_sidecar_that_cannot_save_its_svid_is_unready(tmp_path: Path, ca: CaServer) -> None:
    state = tmp_path / "state"
    (state / "svid.pem").mkdir(parents=True)  # saving the certificate there fails
    config, admin = _config(tmp_path, ca.address, ca.token(ORDERS))
    with started_sidecar(config, admin) as sidecar:
        body = wait_readyz(sidecar, "persist_failed")
        assert "identity.state_dir" in body["reason"]
        assert str(state) in body["reason"]
        status, cert = sidecar.get("/certificate")
        assert status == 200  # it has an SVID and serves with it; only a restart would fail
        assert "cannot save the SVID" in cert["last_error"]


def test_last_error_clears_once_the_ca_comes_up(tmp_path: Path) -> None:
    ca_dir = make_ca(tmp_path / "ca")
    port = free_port()
    config, admin = _config(tmp_path, f"127.0.0.1:{port}", "")
    with started_sidecar(config, admin) as sidecar:
        with serving_ca_dir(ca_dir, tmp_path / "first.log", argv=SERVE) as first:
            (tmp_path / "token").write_text(first.token(ORDERS) + "\n")
        wait_readyz(sidecar, "ca_unreachable")
        status, cert = sidecar.get("/certificate")
        assert status == 503
        assert "unavailable" in cert["last_error"]
        with serving_ca_dir(ca_dir, tmp_path / "ca.log", argv=SERVE, listen=f"127.0.0.1:{port}"):
            wait_ready(sidecar, timeout=90)  # the retry backoff reaches seconds meanwhile
            status, cert = sidecar.get("/certificate")
            assert status == 200
            assert cert["last_error"] is None
            assert cert["last_error_at"] is None
            assert cert["bootstraps"]["ok"] == 1
            assert cert["bootstraps"]["ca_unavailable"] >= 1
