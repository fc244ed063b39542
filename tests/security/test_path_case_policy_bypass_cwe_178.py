"""Path case confusion (CWE-178, improper handling of case sensitivity): policies match
paths exactly, so `/ADMIN` is not `/admin` (documented in docs/policies.md). For an app that
routes case-insensitively, `inbound.path_match = "case_insensitive"` makes policies see the
path lower-cased: then `/ADMIN` and `/Admin/x` meet the `/admin` forbid and the app sees
nothing, while allowed requests still reach the app with the path as sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import security_mesh

pytestmark = pytest.mark.integration


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: catalog.svc\r\n\r\n".encode()


def test_exact_path_match_is_case_sensitive_by_default(tmp_path: Path) -> None:
    with security_mesh(tmp_path) as mesh:
        assert mesh.ask(_get("/admin")).status == 403
        assert mesh.ask(_get("/ADMIN")).status == 200  # exact, as documented
        assert [s.path for s in mesh.app.requests()] == ["/ADMIN"]


def test_case_insensitive_path_match_stops_case_variants(tmp_path: Path) -> None:
    with security_mesh(tmp_path, inbound={"path_match": "case_insensitive"}) as mesh:
        for path in ("/admin", "/ADMIN", "/Admin/x", "/aDmIn/../ADMIN/users"):
            assert mesh.ask(_get(path)).status == 403, path
        assert mesh.app.requests() == []
        assert mesh.ask(_get("/Items/7")).status == 200
        assert [s.path for s in mesh.app.requests()] == ["/Items/7"]
