"""The http inbound over in-memory mTLS: every request decided by Cedar before the app sees
it; the app gets exactly the authorized request, rebuilt, with our XFCC."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from sidecar.config import TimeoutsConfig
from sidecar.policy import ReloadOutcome
from tests.http_inbound_harness import (
    NOW,
    AccessLog,
    Harness,
    capture_access_log,
    closed,
    copy_policies,
    policy_dir_with,
    read_responses,
)


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    yield from capture_access_log()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return copy_policies(tmp_path / "policies")


GET_ORDER = b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n\r\n"
DELETE_ORDER = b"DELETE /orders/1 HTTP/1.1\r\nhost: orders\r\n\r\n"


async def test_an_allowed_get_reaches_the_app_with_the_determining_policy_logged(
    shop: Path, access_log: AccessLog
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        [response] = await read_responses(stream, ["GET"])
        assert response.status == 200
        assert response.body == b"GET /orders/1 0"
        [seen] = h.app.requests
        assert seen.values("host") == ["orders"]
        [line] = await access_log.wait_for(1)
        assert line["decision"] == "allow"
        assert line["policies"] == ["web-reads-orders"]
        assert line["peer_id"] == str(h.peer_id)
        assert line["path"] == "/orders/1"
        assert line["status"] == 200
        assert line["request_id"] == seen.values("x-request-id")[0]
        nursery.cancel_scope.cancel()


async def test_a_forbidden_delete_gets_403_with_the_request_id_and_the_app_sees_nothing(
    shop: Path, access_log: AccessLog
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(
            b"DELETE /orders/1 HTTP/1.1\r\nhost: orders\r\nx-request-id: req-42\r\n\r\n"
        )
        [response] = await read_responses(stream, ["DELETE"])
        assert response.status == 403
        assert b"req-42" in response.body
        assert response.header("x-request-id") == "req-42"
        assert h.app.requests == []
        assert h.app.connections == 0
        [line] = await access_log.wait_for(1)
        assert (line["decision"], line["policies"], line["reason"]) == (
            "deny",
            ["no-delete"],
            "forbidden",
        )
        # A bodiless refusal keeps the connection: the next request is decided on its own.
        await stream.send_all(GET_ORDER)
        [after] = await read_responses(stream, ["GET"])
        assert after.status == 200
        nursery.cancel_scope.cancel()


ERRORING = """
@id("web-reads-orders")
permit (principal, action == Action::"GET", resource == Service::"orders");

@id("overflowing-forbid")
forbid (principal, action, resource)
when { context.time.epoch_seconds * 9223372036854775807 > 0 };
"""


async def test_an_erroring_forbid_next_to_a_matching_permit_denies(
    tmp_path: Path, access_log: AccessLog
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, policy_dir_with(tmp_path / "p", ERRORING))
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        [response] = await read_responses(stream, ["GET"])
        assert response.status == 403
        assert h.app.requests == []
        [line] = await access_log.wait_for(1)
        assert line["decision"] == "deny"
        assert line["reason"] == "evaluation-error"
        assert line["policies"] == ["overflowing-forbid"]
        nursery.cancel_scope.cancel()


async def test_a_malformed_policy_file_during_reload_keeps_the_old_decisions(
    shop: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        version = h.policies.current.version if h.policies.current else ""
        (shop / "shop.cedar").write_text('@id("half")\npermit (principal, action, reso')
        assert h.policies.try_reload(shop, NOW) is ReloadOutcome.FAILED
        assert h.policies.last_error is not None
        assert h.policies.last_error.file == "shop.cedar"
        assert h.policies.current is not None
        assert h.policies.current.version == version
        stream = await h.connect()
        await stream.send_all(GET_ORDER + DELETE_ORDER)
        responses = await read_responses(stream, ["GET", "DELETE"])
        assert [r.status for r in responses] == [200, 403]
        nursery.cancel_scope.cancel()


async def test_pipelined_requests_are_each_decided(shop: Path, access_log: AccessLog) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(
            GET_ORDER + DELETE_ORDER + b"GET /orders/2 HTTP/1.1\r\nhost: orders\r\n\r\n"
        )
        responses = await read_responses(stream, ["GET", "DELETE", "GET"])
        assert [r.status for r in responses] == [200, 403, 200]
        assert [(r.method, r.target) for r in h.app.requests] == [
            ("GET", "/orders/1"),
            ("GET", "/orders/2"),
        ]
        lines = await access_log.wait_for(3)
        assert [line["decision"] for line in lines] == ["allow", "deny", "allow"]
        assert h.app.connections == 1  # the app connection was kept alive and reused
        nursery.cancel_scope.cancel()


async def test_a_spoofed_xfcc_never_reaches_the_app(shop: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        admin = "spiffe://example.org/ns/shop/svc/admin-console"
        await stream.send_all(
            b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n"
            b"x-forwarded-client-cert: By=x;URI=" + admin.encode() + b"\r\n"
            b"X-SPIFFE-ID: " + admin.encode() + b"\r\n"
            b"connection: keep-alive, x-drop-me\r\nx-drop-me: 1\r\n"
            b"proxy-authorization: secret\r\n\r\n"
        )
        [response] = await read_responses(stream, ["GET"])
        assert response.status == 200
        [seen] = h.app.requests
        digest = hashlib.sha256(h.peer_leaf_der()).hexdigest()
        assert seen.values("x-forwarded-client-cert") == [
            f"By={h.own_id};Hash={digest};URI={h.peer_id}"
        ]
        names = {name for name, _ in seen.headers}
        assert not names & {"x-spiffe-id", "connection", "x-drop-me", "proxy-authorization"}
        assert len(seen.values("x-request-id")) == 1
        nursery.cancel_scope.cancel()


async def test_a_valid_traceparent_is_kept_and_an_invalid_one_dropped(shop: Path) -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(
            f"GET /orders/1 HTTP/1.1\r\nhost: orders\r\ntraceparent: {good}\r\n\r\n"
            "GET /orders/2 HTTP/1.1\r\nhost: orders\r\ntraceparent: 00-zz\r\n\r\n".encode()
        )
        assert [r.status for r in await read_responses(stream, ["GET", "GET"])] == [200, 200]
        first, second = h.app.requests
        assert first.values("traceparent") == [good]
        assert second.values("traceparent") == []
        nursery.cancel_scope.cancel()


async def test_audit_mode_forwards_what_would_be_denied_and_logs_it(
    shop: Path, access_log: AccessLog
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, audit=True)
        stream = await h.connect()
        await stream.send_all(DELETE_ORDER)
        [response] = await read_responses(stream, ["DELETE"])
        assert response.status == 200
        assert [r.method for r in h.app.requests] == ["DELETE"]
        [line] = await access_log.wait_for(1)
        assert (line["decision"], line["policies"]) == ("audit_deny", ["no-delete"])
        text = h.observer.metrics.render().decode()
        assert 'meshgate_authz_decisions_total{policy="no-delete",result="audit_deny"} 1.0' in text
        nursery.cancel_scope.cancel()


async def test_an_unreachable_app_gets_502_and_a_silent_one_504(
    shop: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, timeouts=TimeoutsConfig(response_timeout_seconds=5))
        h.app.refuse = True
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        [refused] = await read_responses(stream, ["GET"])
        assert refused.status == 502
        assert b"refused" in refused.body
        h.app.refuse = False
        h.app.hold = trio.Event()
        started = trio.current_time()
        await stream.send_all(GET_ORDER)
        [silent] = await read_responses(stream, ["GET"])
        assert silent.status == 504
        assert 5 <= trio.current_time() - started < 6
        nursery.cancel_scope.cancel()


async def test_a_revoked_peer_is_cut_off_between_requests(shop: Path) -> None:
    from sidecar.identity.credentials import Revocations

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        assert [r.status for r in await read_responses(stream, ["GET"])] == [200]
        h.store.publish_revocations(Revocations(spiffe_ids=frozenset({h.peer_id})))
        with trio.fail_after(5):
            assert await closed(stream)
        assert h.tracker.closed_by_revocation == 1
        nursery.cancel_scope.cancel()


async def test_an_idle_keep_alive_connection_is_closed(
    shop: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, timeouts=TimeoutsConfig(keepalive_idle_timeout_seconds=7))
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        await read_responses(stream, ["GET"])
        started = trio.current_time()
        assert await closed(stream)
        assert 7 <= trio.current_time() - started < 8
        nursery.cancel_scope.cancel()


async def test_near_the_end_of_the_peer_svid_responses_say_connection_close(
    shop: Path, access_log: AccessLog, autojump_clock: object
) -> None:
    """From `retire_margin_seconds` (10 s) before the first notAfter of the two SVIDs the
    inbound side closes after each response, so no client puts a request on a connection
    that would be cut under it."""
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        leaf = h.pki.raw_leaf([str(h.peer_id)], not_after=NOW + timedelta(minutes=5))
        stream = await h.connect(leaf)
        await stream.send_all(GET_ORDER)
        [early] = await read_responses(stream, ["GET"])
        assert early.status == 200
        assert early.header("connection") is None  # kept alive
        for _ in range(9):  # keep it busy (not idle) up to 4 min 30 s
            await trio.sleep(30)
            await stream.send_all(GET_ORDER)
            [response] = await read_responses(stream, ["GET"])
            assert response.header("connection") is None
        await trio.sleep(25)  # 5 s before the peer's notAfter: inside the margin
        await stream.send_all(GET_ORDER)
        [late] = await read_responses(stream, ["GET"])
        assert late.status == 200
        assert late.header("connection") == "close"
        assert await closed(stream)
        nursery.cancel_scope.cancel()
