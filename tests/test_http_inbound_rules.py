"""The pure request rules of the inbound hop: canonical Host, look-alike and duplicate
headers, forwarding-header modes, body pace, path match. One table per rule."""

from __future__ import annotations

import pytest

from meshgate.http import HttpError, HttpLimits
from meshgate.http.body_pace import BodyPace
from meshgate.http.head import parse_request_head
from meshgate.http.header_names import check_look_alikes, check_policy_headers
from meshgate.http.host import canonical_host
from meshgate.http.inbound_rules import InboundRules
from meshgate.http.proxy_headers import inbound_proxy_headers

CANONICAL = [
    ("internal.svc", "internal.svc"),
    ("INTERNAL.Svc", "internal.svc"),
    ("internal.svc.", "internal.svc"),
    ("internal.svc:80", "internal.svc"),
    ("internal.svc:443", "internal.svc"),
    ("internal.svc:8443", "internal.svc"),  # the listener's own port
    ("internal.svc:0080", "internal.svc"),
    ("internal.svc:8080", "internal.svc:8080"),
    ("under_score.svc", "under_score.svc"),
    ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]:443", "[::1]"),
    ("[0:0:0:0::1]:9000", "[::1]:9000"),
    ("", ""),
]
REFUSED = [
    "internal.svc..",
    ".internal.svc",
    "internal..svc",
    "-internal.svc",
    "internal-.svc",
    "internal%2esvc",
    "user@internal.svc",
    "internal.svc:",
    ":80",
    "internal.svc:99999",
    "internal.svc:0",
    "internal.svc:+80",
    "internal.svc:80:80",
    "[::1",
    "[::1]x",
    "[zz::1]",
    "[fe80::1%25eth0]",
    "127.1",
    "1.2.3.256",
    "a" * 64 + ".svc",
    ".".join(["a" * 60] * 5),
]


@pytest.mark.parametrize(("value", "expected"), CANONICAL)
def test_canonical_host(value: str, expected: str) -> None:
    assert canonical_host(value, local_ports=(8443,)) == expected


@pytest.mark.parametrize("value", REFUSED)
def test_invalid_host_syntax_is_refused_with_400(value: str) -> None:
    with pytest.raises(HttpError) as caught:
        canonical_host(value)
    assert caught.value.status_hint == 400


def test_a_host_that_disagrees_with_the_absolute_target_is_refused() -> None:
    assert canonical_host("a.svc", absolute_authority="A.svc.:80") == "a.svc"
    for host, authority in [("a.svc", "b.svc"), ("a.svc:8080", "a.svc"), ("", "a.svc")]:
        with pytest.raises(HttpError):
            canonical_host(host, absolute_authority=authority)


@pytest.mark.parametrize(
    "line",
    [
        "Transfer_Encoding: chunked",
        "content_length: 5",
        "X_Forwarded_Client_Cert: By=x",
        "x_spiffe_id: spiffe://example.org/x",
        "X_Forwarded_For: 1.2.3.4",
        "X_Forwarded-Host: evil",
        "Proxy_Authorization: x",
        "X_Original_URL: /admin",
        "X_Envoy_Internal: true",
        "L5d_Client_Id: x",
    ],
)
def test_the_reader_refuses_look_alikes_of_owned_headers(line: str) -> None:
    head = f"GET / HTTP/1.1\r\nHost: a\r\n{line}".encode()
    with pytest.raises(HttpError) as caught:
        parse_request_head(head, HttpLimits())
    assert caught.value.status_hint == 400
    assert "looks like" in caught.value.reason


@pytest.mark.parametrize("line", ["X_Custom: 1", "Ho_st: x", "Connection_: x", "X-A: a_b"])
def test_underscores_elsewhere_are_ordinary(line: str) -> None:
    head = f"GET / HTTP/1.1\r\nHost: a\r\n{line}".encode()
    parse_request_head(head, HttpLimits())
    check_look_alikes((("x_custom", "1"),))


def test_copies_and_look_alikes_of_policy_read_headers_are_refused() -> None:
    names = frozenset({"x-role", "x_tenant"})
    ok: list[tuple[str, str]] = [
        ("x-role", "a"),
        ("x_tenant", "t"),
        ("accept", "1"),
        ("accept", "2"),
    ]
    check_policy_headers(tuple(ok), names)
    check_policy_headers((("x-role", "a"), ("x-role", "b")), frozenset())
    for bad in (
        (("x-role", "user"), ("x-role", "admin")),
        (("x_role", "admin"),),
        (("x-role", "user"), ("x_role", "admin")),
        (("x-tenant", "t"),),
    ):
        with pytest.raises(HttpError) as caught:
            check_policy_headers(bad, names)
        assert caught.value.status_hint == 400


SPOOFED = (
    ("host", "A.svc:80"),
    ("forwarded", "for=10.0.0.1"),
    ("x-forwarded-for", "10.0.0.1"),
    ("x-forwarded-host", "internal.svc"),
    ("x-real-ip", "10.0.0.1"),
    ("x-original-url", "/admin"),
    ("x-http-method-override", "DELETE"),
    ("x-envoy-internal", "true"),
    ("l5d-client-id", "x"),
    ("x-forwarded-client-cert", "By=ours"),
    ("accept", "*/*"),
)


def test_forwarding_modes() -> None:
    kept = [("host", "a.svc"), ("x-forwarded-client-cert", "By=ours"), ("accept", "*/*")]
    strip = inbound_proxy_headers(SPOOFED, mode="strip", source_ip="10.9.8.7", host="a.svc")
    assert list(strip) == kept
    mine = inbound_proxy_headers(SPOOFED, mode="set", source_ip="10.9.8.7", host="a.svc")
    assert list(mine) == [
        *kept,
        ("x-forwarded-for", "10.9.8.7"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=10.9.8.7;proto=https"),
    ]
    chain = inbound_proxy_headers(SPOOFED, mode="append", source_ip="::1", host="")
    assert list(chain) == [
        *kept[1:],
        ("x-forwarded-for", "10.0.0.1, ::1"),
        ("x-forwarded-proto", "https"),
        ("forwarded", 'for=10.0.0.1, for="[::1]";proto=https'),
    ]
    odd = inbound_proxy_headers((), mode="set", source_ip="not-an-ip", host="a")
    assert ("forwarded", "for=unknown;proto=https") in odd


def test_body_pace_grows_with_the_bytes_received() -> None:
    pace = BodyPace(timeout_seconds=10.0, min_rate_bytes_per_second=100)
    assert pace.deadline(1000.0, 0) == 1010.0
    assert pace.deadline(1000.0, 500) == 1015.0
    hard = BodyPace(timeout_seconds=10.0, min_rate_bytes_per_second=0)
    assert hard.deadline(1000.0, 10**9) == 1010.0


def test_path_match() -> None:
    assert InboundRules().policy_path("/ADMIN") == "/ADMIN"
    folded = InboundRules(path_match="case_insensitive")
    assert folded.policy_path("/ADMIN/%3F") == "/admin/%3f"
