"""Host header confusion (CWE-644; PortSwigger "HTTP Host header attacks"): a Host that the
app reads as `internal.svc` must be the Host the policy decided. A trailing dot, a default
or listener port, or upper case must not walk past `forbid ... context.host == "internal.svc"`;
a Host that is not a host, or disagrees with an absolute-form target, is refused before any
policy runs. The app sees none of it, and gets the canonical Host of what it does see."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import security_mesh

pytestmark = pytest.mark.integration


def _get(host: str, target: str = "/items") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_host_header_confusion_cannot_bypass_a_host_forbid(tmp_path: Path) -> None:
    with security_mesh(tmp_path) as mesh:
        port = mesh.pair.b_inbound
        spellings = [
            "internal.svc",
            "internal.svc.",
            "INTERNAL.Svc",
            "internal.svc:80",
            "internal.svc:443",
            f"internal.svc:{port}",
            "internal.svc.:0443",
        ]
        for host in spellings:
            assert mesh.ask(_get(host)).status == 403, host
        malformed = [
            "internal.svc..",
            "internal%2esvc",
            "internal.svc:99999",
            "internal.svc:",
            "user@internal.svc",
            "[::1",
            "127.1",
        ]
        for host in malformed:
            assert mesh.ask(_get(host)).status == 400, host
        # Absolute-form: refused whatever Host says, so the two can never disagree.
        assert mesh.ask(_get("catalog.svc", "http://internal.svc/items")).status == 400
        assert mesh.ask(_get("internal.svc", "http://internal.svc/items")).status == 400
        assert mesh.app.requests() == []

        # Not an outage: another host goes through, and the app gets the canonical Host.
        response = mesh.ask(_get("Catalog.SVC.:80"))
        assert response.status == 200
        (seen,) = mesh.app.requests()
        assert seen.header("host") == ["catalog.svc"]
        assert mesh.ask(_get("catalog.svc:8080")).status == 200
        assert mesh.app.requests()[-1].header("host") == ["catalog.svc:8080"]
