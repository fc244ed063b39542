"""Forwarding-header spoofing (CWE-348, use of a less trusted source; CWE-290 by IP
allow-lists on `X-Forwarded-For`; the `X-Original-URL` / `X-Rewrite-URL` route override of
CVE-2018-14773): headers a client writes about where a request came from, or that make a
framework route or re-method it, never reach the app (nor a policy) as if the mesh had
said them. Per inbound listener, `forwarded_headers` decides: "set" (default) strips them and sets
X-Forwarded-For / -Proto and Forwarded from the verified connection, "strip" sets nothing,
"append" keeps the client's chains and appends this hop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import security_mesh

pytestmark = pytest.mark.integration

_SPOOFED = (
    "Forwarded: for=10.0.0.1;proto=http;host=internal.svc",
    "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-Proto: http",
    "X-Forwarded-Host: internal.svc",
    "X-Forwarded-Port: 80",
    "X-Real-IP: 10.0.0.1",
    "True-Client-IP: 10.0.0.1",
    "X-Original-URL: /admin",
    "X-Rewrite-URL: /admin",
    "X-HTTP-Method-Override: DELETE",
    "X-Envoy-Internal: true",
    "l5d-client-id: spiffe://example.org/ns/ops/svc/admin",
)
_NAMES = {line.partition(":")[0].lower() for line in _SPOOFED}
_SET = {"x-forwarded-for", "x-forwarded-proto", "forwarded"}


def _request(path: str = "/items") -> bytes:
    lines = "".join(f"{h}\r\n" for h in _SPOOFED)
    return f"GET {path} HTTP/1.1\r\nHost: catalog.svc\r\n{lines}\r\n".encode()


@pytest.mark.parametrize("mode", ["set", "strip", "append"])
def test_client_forwarding_headers_never_reach_the_app_unvouched(tmp_path: Path, mode: str) -> None:
    inbound = None if mode == "set" else {"forwarded_headers": mode}
    with security_mesh(tmp_path, inbound=inbound) as mesh:
        # An X-Forwarded-For allow-list ("/reports only from 10.0.0.1") sees what the app
        # will see, never the client's claim.
        assert mesh.ask(_request("/reports")).status == 403
        assert mesh.app.requests() == []
        assert mesh.ask(_request()).status == 200
        (seen,) = mesh.app.requests()
        got = {name.lower(): seen.header(name.lower()) for name, _ in seen.headers}
        assert seen.method == "GET"
        assert seen.path == "/items"
        if mode == "strip":
            assert not _NAMES & got.keys()
        elif mode == "set":
            assert _NAMES & got.keys() == _SET
            assert got["x-forwarded-for"] == ["127.0.0.1"]
            assert got["x-forwarded-proto"] == ["https"]
            assert got["forwarded"] == ["for=127.0.0.1;proto=https"]
        else:
            assert _NAMES & got.keys() == _SET
            assert got["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
            assert got["x-forwarded-proto"] == ["https"]
            assert got["forwarded"] == [
                "for=10.0.0.1;proto=http;host=internal.svc, for=127.0.0.1;proto=https"
            ]
        assert got["x-forwarded-client-cert"][0].startswith("By=spiffe://")
