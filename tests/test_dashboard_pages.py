"""The dashboard's pure core: what it answers, to whom, with which headers."""

from __future__ import annotations

import pytest

from mesh_ca.dashboard.pages import ASSETS, allowed_hosts, dashboard_reply, mesh_window_of

HOSTS = allowed_hosts("127.0.0.1", 9471)
MESH = b'{"schema":1}'


def test_the_page_and_its_assets_are_served_with_a_strict_content_security_policy() -> None:
    for path, name in (("/", "index.html"), ("/dashboard.js", "dashboard.js")):
        reply = dashboard_reply("GET", path, "127.0.0.1:9471", HOSTS, None)
        assert reply.status == 200
        assert reply.body == ASSETS[name]
        headers = dict(reply.headers)
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_the_page_loads_nothing_from_another_origin_and_inserts_no_markup() -> None:
    page = ASSETS["index.html"].decode() + ASSETS["dashboard.js"].decode()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert "innerHTML" not in page
    assert "<script>" not in ASSETS["index.html"].decode()  # no inline script (CSP)


@pytest.mark.parametrize(
    "host", [None, "attacker.example:9471", "127.0.0.1:80", "127.0.0.1", "localhost:9472"]
)
def test_a_host_that_does_not_name_the_listener_is_refused(host: str | None) -> None:
    reply = dashboard_reply("GET", "/api/mesh", host, HOSTS, MESH)
    assert reply.status == 421
    assert MESH not in reply.body


@pytest.mark.parametrize("host", ["127.0.0.1:9471", "localhost:9471", "LOCALHOST:9471"])
def test_loopback_names_of_the_listener_are_accepted(host: str) -> None:
    assert dashboard_reply("GET", "/api/mesh", host, HOSTS, MESH).body == MESH


def test_the_mesh_json_is_passed_through_and_an_unreachable_ca_is_a_502() -> None:
    ok = dashboard_reply("GET", "/api/mesh?window=5m", "127.0.0.1:9471", HOSTS, MESH)
    assert (ok.status, ok.body, ok.content_type) == (200, MESH, "application/json")
    down = dashboard_reply("GET", "/api/mesh", "127.0.0.1:9471", HOSTS, None)
    assert down.status == 502
    assert b"ca_unreachable" in down.body


@pytest.mark.parametrize(
    ("target", "window"),
    [
        ("/api/mesh", "1m"),
        ("/api/mesh?window=15m", "15m"),
        ("/api/mesh?window=2h", None),
        ("/api/mesh?window=1m&window=5m", None),
    ],
)
def test_the_window_is_one_of_three(target: str, window: str | None) -> None:
    assert mesh_window_of(target) == window
    status = dashboard_reply("GET", target, "127.0.0.1:9471", HOSTS, MESH).status
    assert status == (200 if window else 400)


def test_the_dashboard_only_reads_and_knows_its_paths() -> None:
    assert dashboard_reply("POST", "/api/mesh", "127.0.0.1:9471", HOSTS, MESH).status == 405
    assert dashboard_reply("GET", "/../etc/passwd", "127.0.0.1:9471", HOSTS, MESH).status == 404
    assert dashboard_reply("GET", "/assets/x", "127.0.0.1:9471", HOSTS, MESH).status == 404


def test_an_ipv6_listener_accepts_its_bracketed_name() -> None:
    hosts = allowed_hosts("::1", 8080)
    assert "[::1]:8080" in hosts
    assert "localhost:8080" in hosts
