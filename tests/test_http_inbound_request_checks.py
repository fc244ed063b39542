"""What the http inbound decides on is what the app gets: paths are normalized once and
forwarded as authorized; malformed and smuggling forms are refused before any policy runs
and before the app sees a byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.http_inbound_harness import (
    AccessLog,
    Harness,
    capture_access_log,
    copy_policies,
    read_responses,
)


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    yield from capture_access_log()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return copy_policies(tmp_path / "policies")


async def _one(shop: Path, raw: bytes, method: str = "GET") -> tuple[int, Harness]:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(raw)
        responses = await read_responses(stream, [method])
        nursery.cancel_scope.cancel()
    assert len(responses) == 1
    return responses[0].status, h


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/orders/x/../1", "/orders/1"),
        ("//orders//1", "/orders/1"),
        ("/orders/./1", "/orders/1"),
        ("/orders/%31", "/orders/1"),
        ("/orders/1;v=2", "/orders/1;v=2"),
        ("/orders/1?x=%2F", "/orders/1?x=%2F"),
    ],
)
async def test_a_path_is_authorized_and_forwarded_in_its_normalized_form(
    shop: Path, access_log: AccessLog, target: str, forwarded: str
) -> None:
    status, h = await _one(shop, f"GET {target} HTTP/1.1\r\nhost: orders\r\n\r\n".encode())
    assert status == 200
    [seen] = h.app.requests
    assert seen.target == forwarded
    [line] = await access_log.wait_for(1)
    assert line["path"] == forwarded.partition("?")[0]  # the path that was authorized


@pytest.mark.parametrize(
    ("target", "status", "policy"),
    [
        ("/public/../admin", 403, "admin-only-ops"),
        ("//admin", 403, "admin-only-ops"),
        ("/admin/./x", 403, "admin-only-ops"),
        ("/orders/..;/admin", 400, None),
        ("/admin%2Fx", 400, None),
        ("/orders/1%2F..%2F..%2Fadmin", 400, None),
        ("/orders/1#frag", 400, None),
        ("/../admin", 400, None),
    ],
)
async def test_a_disguised_admin_path_never_reaches_the_app(
    shop: Path, access_log: AccessLog, target: str, status: int, policy: str | None
) -> None:
    got, h = await _one(shop, f"GET {target} HTTP/1.1\r\nhost: orders\r\n\r\n".encode())
    assert got == status
    assert h.app.requests == []
    [line] = await access_log.wait_for(1)
    assert line["policies"] == ([policy] if policy else [])
    assert line["decision"] == ("deny" if policy else "none")


SMUGGLING = {
    "cl_and_te": b"POST /orders HTTP/1.1\r\nhost: orders\r\ncontent-length: 4\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /orders HTTP/1.1\r\nhost: orders\r\ncontent-length: 4\r\n"
    b"content-length: 4\r\n\r\nabcd",
    "bare_lf": b"GET /orders/1 HTTP/1.1\nhost: orders\r\n\r\n",
    "obs_fold": b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\nx-a: 1\r\n  folded\r\n\r\n",
    "te_on_http10": b"POST /orders HTTP/1.0\r\nhost: orders\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "nul_in_value": b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\nx-a: a\x00b\r\n\r\n",
    "two_hosts": b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\nhost: evil\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_a_smuggling_form_is_refused_before_the_app_sees_anything(
    shop: Path, name: str
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        # A good request first: it is served; nothing of the bad one that follows is.
        await stream.send_all(b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n\r\n" + SMUGGLING[name])
        responses = await read_responses(stream, ["GET", "POST"])
        assert [r.status for r in responses] == [200, 400]
        assert responses[1].header("connection") == "close"
        assert [r.target for r in h.app.requests] == ["/orders/1"]
        nursery.cancel_scope.cancel()


async def test_an_oversized_head_gets_431_and_the_app_sees_nothing(shop: Path) -> None:
    big = b"x-big: " + b"a" * 20_000 + b"\r\n"
    status, h = await _one(shop, b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n" + big + b"\r\n")
    assert status == 431
    assert h.app.requests == []
