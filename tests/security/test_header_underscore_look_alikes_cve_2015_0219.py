"""Header spoofing by `_` look-alikes (Django CVE-2015-0219 class; nginx
`underscores_in_headers`): WSGI and CGI read `Transfer_Encoding` as `Transfer-Encoding`, so a
look-alike of a framing header frames the body one way for the app and another for the
sidecar (CL.TE smuggling on an app connection the pool reuses), and a look-alike of an
identity header or of a header a policy reads says something the sidecar never checked.
Each is refused with 400 and the app sees nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import security_mesh

pytestmark = pytest.mark.integration


def _get(header: str) -> bytes:
    return f"GET /items HTTP/1.1\r\nHost: catalog.svc\r\n{header}\r\n\r\n".encode()


_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: catalog.svc\r\n\r\n"


def test_underscore_look_alikes_of_owned_and_policy_read_headers_are_refused(
    tmp_path: Path,
) -> None:
    with security_mesh(tmp_path, with_outbound=True) as mesh:
        chunked = b"0\r\n\r\n" + _SMUGGLED
        attacks = [
            b"POST /items HTTP/1.1\r\nHost: catalog.svc\r\nContent-Length: %d\r\n"
            b"Transfer_Encoding: chunked\r\n\r\n" % len(chunked) + chunked,
            b"POST /items HTTP/1.1\r\nHost: catalog.svc\r\nContent_Length: %d\r\n\r\n"
            % len(_SMUGGLED)
            + _SMUGGLED,
            _get("X_Forwarded_Client_Cert: By=x;URI=spiffe://example.org/ns/ops/svc/admin"),
            _get("X_Spiffe_Id: spiffe://example.org/ns/ops/svc/admin"),
            _get("X_Forwarded_For: 10.0.0.1"),
            _get("X_Role: admin"),
        ]
        for attack in attacks:
            inbound = mesh.mesh_client()
            assert inbound.ask(attack).status == 400, attack
            assert inbound.closed()
            # From the local app's side: the outbound refuses it too (or relays the 400).
            assert mesh.plain_client().ask(attack).status == 400, attack
        assert mesh.app.requests() == []
        assert mesh.app.partial == 0

        # Not an outage: an `_` in a name we do not own is an ordinary header.
        assert mesh.ask(_get("X_Custom: 1")).status == 200
        assert mesh.app.requests()[-1].header("x_custom") == ["1"]
