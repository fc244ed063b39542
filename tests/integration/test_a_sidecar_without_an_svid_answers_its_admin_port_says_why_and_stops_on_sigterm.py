"""A sidecar that has no SVID yet (no token, CA down, token expired, token for another ID,
corrupt stored key) answers ``/healthz``, says why in ``/readyz`` and stops on SIGTERM or
SIGINT with exit 0 — with one process or with ``workers = 2``."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN, CaServer, make_ca, serving_ca_dir
from tests.procs import free_port, started_sidecar, wait_readyz, write_config

pytestmark = pytest.mark.integration

ORDERS = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/orders")
PAYMENTS = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/payments")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    directory = tmp_path_factory.mktemp("ca")
    with serving_ca_dir(make_ca(directory / "ca"), directory / "ca.log") as server:
        yield server


def _expired_token(ca: CaServer) -> str:
    token, token_id, secret_hash = new_token()
    now = datetime.now(UTC)
    store = ca.store()
    try:
        store.add_token(token_id, secret_hash, ORDERS, now - timedelta(hours=1), now)
    finally:
        store.close()
    return token


def _config(tmp: Path, ca: CaServer, case: str, workers: int) -> tuple[Path, int]:
    admin = free_port()
    state = tmp / "state"
    address = ca.address
    identity: dict[str, Any] = {
        "spiffe_id": str(ORDERS),
        "bundle_file": str(tmp / "bundle.pem"),
        "ca_addresses": [address],
        "state_dir": str(state),
        "token_file": str(tmp / "token"),
    }
    (tmp / "bundle.pem").write_bytes(ca.ca.bundle.roots_pem())
    if case == "ca_unreachable":
        identity["ca_addresses"] = [f"127.0.0.1:{free_port()}"]  # nothing listens there
        (tmp / "token").write_text(ca.token(ORDERS) + "\n")
    elif case == "token_refused":  # expired
        (tmp / "token").write_text(_expired_token(ca) + "\n")
    elif case == "token_wrong_id":
        (tmp / "token").write_text(ca.token(PAYMENTS) + "\n")
    elif case == "corrupt_key":  # the stored SVID is unusable and there is no token
        state.mkdir(mode=0o700)
        (state / "svid.pem").write_bytes(ca.ca.bundle.roots_pem())
        (state / "svid.key").write_text("garbage\n")
    config = {
        "workers": workers,
        "identity": identity,
        "outbound": [
            {
                "listen": f"127.0.0.1:{free_port()}",
                "service": "payments",
                "endpoints": [f"127.0.0.1:{free_port()}"],
                "spiffe_ids": [str(PAYMENTS)],
            }
        ],
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    return write_config(tmp / "sidecar.toml", config), admin


CASES = [
    ("waiting_for_token", signal.SIGTERM, 1),  # no token file at all
    ("corrupt_key", signal.SIGINT, 1),
    ("ca_unreachable", signal.SIGTERM, 1),
    ("ca_unreachable", signal.SIGTERM, 2),
    ("token_refused", signal.SIGINT, 1),
    ("token_wrong_id", signal.SIGTERM, 1),
]
EXPECTED_CODE = {"corrupt_key": "waiting_for_token"}


@pytest.mark.parametrize(("case", "sig", "workers"), CASES)
def test_a_sidecar_without_an_svid_is_observable_and_stoppable(
    tmp_path: Path, ca: CaServer, case: str, sig: signal.Signals, workers: int
) -> None:
    config, admin = _config(tmp_path, ca, case, workers)
    with started_sidecar(config, admin) as sidecar:
        assert sidecar.get("/healthz") == (200, {"status": "ok"})
        body = wait_readyz(sidecar, EXPECTED_CODE.get(case, case))
        assert body["ready"] is False
        assert body["reason"].startswith("no SVID yet: ")
        status, cert = sidecar.get("/certificate")
        assert status == 503
        assert cert["last_error"]  # what the last attempt said
        if case == "corrupt_key":
            assert "stored SVID unreadable" in sidecar.log()
        sent = time.monotonic()
        code = sidecar.stop(sig, timeout=15)
        # Reported, not asserted (no wall-clock assertions): the issue asks for < 1 s.
        print(f"{case} workers={workers}: {sig.name} to exit {time.monotonic() - sent:.2f} s")
        assert code == 0, sidecar.log()
