"""One strict HTTP reader: the CA reads requests with the sidecar's reader (meshgate/http/,
rules in rules.py; mesh_ca never imports sidecar), so both refuse the same heads, with the
same status and reason."""

from __future__ import annotations

import pytest

from mesh_ca.server.wire import WireError
from mesh_ca.server.wire import parse_request_head as ca_parse
from meshgate.http import HttpError, HttpLimits
from meshgate.http import head as sidecar_head
from meshgate.http import rules as http_rules
from meshgate.http.head import parse_request_head as sidecar_parse


def test_the_sidecar_uses_the_shared_rules_not_copies() -> None:
    assert sidecar_head._TARGET_RE is http_rules.ORIGIN_TARGET_RE
    assert sidecar_head._HOST_RE is http_rules.HOST_RE
    assert sidecar_head._CONTENT_LENGTH_RE is http_rules.CONTENT_LENGTH_RE
    assert sidecar_head._TOKEN_STR_RE is http_rules.TOKEN_RE


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a",
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: b",
        b"GET / HTTP/1.1\r\nHost: a b",
        b"GET / HTTP/1.1",
        b"GET /a\\b HTTP/1.1\r\nHost: a",
        b"GET /%zz HTTP/1.1\r\nHost: a",
        b"GET /a#b HTTP/1.1\r\nHost: a",
        b"GET http://a/ HTTP/1.1\r\nHost: a",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb",
        b"GET / HTTP/1.1\r\nHost: a\r\nX : b",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1",
    ],
)
def test_both_readers_refuse_the_same_heads(head: bytes) -> None:
    with pytest.raises(HttpError) as sidecar:
        sidecar_parse(head, HttpLimits())
    with pytest.raises(WireError) as ca:
        ca_parse(head + b"\r\n\r\n")
    # One piece of code decided both: the same status and the same reason.
    assert (ca.value.status, str(ca.value)) == (sidecar.value.status_hint, sidecar.value.reason)


def test_both_readers_accept_the_same_plain_head() -> None:
    head = b"POST /v1/renew?x=1 HTTP/1.1\r\nHost: ca:8443\r\nContent-Length: 2"
    sidecar = sidecar_parse(head, HttpLimits())
    ca = ca_parse(head + b"\r\n\r\n{}")
    assert ca is not None
    assert (sidecar.method, sidecar.target) == (ca.method, ca.target)
    assert ca.content_length == 2
