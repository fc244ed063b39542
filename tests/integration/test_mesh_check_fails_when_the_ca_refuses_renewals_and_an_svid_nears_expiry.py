"""`mesh-ca check` fails with the right hint when a sidecar's SVID is about to expire.

The CA issues 60-second SVIDs and its issuance rate limit lets the three bootstraps
through and then refuses every renewal (429), so the sidecars keep serving on SVIDs that
run out. Once a quarter of an SVID's lifetime is left, `check` says which one expires when
and that renewals are failing; before, it passes that check.

Real processes: the CA with its loopback admin listener, three apps, three sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.report_mesh import mesh_ca_cli, reporting, running_mesh, wait_until

pytestmark = pytest.mark.integration


def _svid_check(admin: str) -> tuple[int, dict[str, Any]]:
    done = mesh_ca_cli("check", "--admin", admin, "--output", "json")
    document = json.loads(done.stdout)
    return done.returncode, next(c for c in document["checks"] if c["name"] == "svid_expiry")


def test_check_names_svids_that_renewals_did_not_replace(tmp_path: Path) -> None:
    limits = {"rate_limit_per_second": "0.0001", "rate_limit_burst": "3"}
    with running_mesh(tmp_path, leaf_ttl="60s", ca_server=limits) as mesh:
        wait_until("every sidecar to report", lambda: reporting(mesh))
        code, fresh = _svid_check(mesh.ca_admin)
        assert fresh["ok"], fresh

        def orders_expiring() -> tuple[int, dict[str, Any]] | None:
            # The sidecars bootstrapped one after another, so their SVIDs cross the line a
            # moment apart: wait for orders' (the first flagged may be another's).
            code, check = _svid_check(mesh.ca_admin)
            flagged = any("/svc/orders" in line for line in check["details"])
            return (code, check) if not check["ok"] and flagged else None

        code, check = wait_until("check to flag orders' SVID", orders_expiring, timeout=90)
        assert code == 1
        assert "about to expire" in check["message"]
        assert "renewals are failing" in check["hint"]
        assert any("/svc/orders" in line and "SVID expires in" in line for line in check["details"])
        # The CA did refuse them: the sidecars say why on their admin port.
        cert = mesh.services["orders"].admin_json("/certificate")
        assert "rate_limited" in str(cert.get("last_error")), cert
