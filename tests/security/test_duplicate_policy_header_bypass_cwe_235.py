"""HTTP header pollution (CWE-235, improper handling of extra parameters): two copies of a
header a policy reads would reach Cedar joined (`user, admin`), so
`forbid ... context.headers["x-role"] == "admin"` would not fire while an app that takes the
last copy acts as admin. A second copy of any header the loaded policies read is refused
with 400; copies of headers no policy reads go on as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import security_mesh

pytestmark = pytest.mark.integration


def _get(*headers: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"GET /items HTTP/1.1\r\nHost: catalog.svc\r\n{lines}\r\n".encode()


def test_copies_of_a_policy_read_header_are_refused(tmp_path: Path) -> None:
    with security_mesh(tmp_path) as mesh:
        assert mesh.ask(_get("X-Role: user", "X-Role: admin")).status == 400
        assert mesh.ask(_get("X-Role: admin", "x-role: user")).status == 400
        assert mesh.ask(_get("X-Role: admin")).status == 403
        assert mesh.app.requests() == []

        assert mesh.ask(_get("X-Role: user")).status == 200
        assert mesh.ask(_get("Accept: text/plain", "Accept: text/html")).status == 200
        assert [s.header("x-role") for s in mesh.app.requests()] == [["user"], []]
