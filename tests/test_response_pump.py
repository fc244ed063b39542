"""The response relay both http directions share (sidecar/transport/response_pump.py), over
in-memory streams with trio's MockClock: re-framing, one write for head and body, 1xx, the
two deadlines, and which side failed."""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing

from meshgate.http import ResponseReader
from meshgate.transport.socket_stream import DeadlineStream
from sidecar.transport.response_pump import Failure, Relayed, relay_response


@dataclass
class _Count:
    status: int | None = None
    bytes_out: int = 0


@dataclass
class _Run:
    relayed: Relayed
    count: _Count
    writes: list[bytes]  # what the client received, one entry per write we made

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


class _Recorder(trio.abc.SendStream):
    """A client that records each write (to see what was coalesced), or is gone."""

    def __init__(self, *, gone: bool = False) -> None:
        self.writes: list[bytes] = []
        self.gone = gone

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.gone:
            raise trio.BrokenResourceError("client reset")
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _relay(
    upstream: trio.abc.Stream,
    *,
    method: str = "GET",
    client_version: str = "1.1",
    keep_client: bool = True,
    client: _Recorder | None = None,
) -> _Run:
    reader = ResponseReader()
    reader.expect(method)
    client = client or _Recorder()
    clock = DeadlineStream(upstream)
    count = _Count()
    relayed = await relay_response(
        reader,
        clock,
        clock,
        client,
        DeadlineStream(trio.testing.memory_stream_pair()[0]),  # only its send_deadline is set
        count,
        method=method,
        client_version=client_version,
        keep_client=lambda: keep_client,
        response_seconds=30.0,
        idle_seconds=5.0,
    )
    return _Run(relayed, count, client.writes)


async def test_a_length_response_goes_in_one_write_with_its_body() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello")
    run = await _relay(ours)
    assert run.writes == [b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"]
    assert (run.count.status, run.count.bytes_out) == (200, 5)
    r = run.relayed
    assert (r.complete, r.started, r.keep_client, r.keep_upstream, r.failure) == (
        True,
        True,
        True,
        True,
        None,
    )


async def test_a_body_delimited_by_close_is_chunked_for_an_http11_client() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\n\r\nabc")
    await app.send_eof()
    run = await _relay(ours)
    assert run.wire == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert run.relayed.complete
    assert run.relayed.keep_client  # the client connection lives on
    assert not run.relayed.keep_upstream


async def test_a_1xx_goes_before_the_final_head_and_not_to_an_http10_client() -> None:
    for version, first in (
        ("1.1", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"),
        ("1.0", b""),
    ):
        ours, app = trio.testing.memory_stream_pair()
        await app.send_all(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\nconnection: x\r\nx: 1\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        run = await _relay(ours, client_version=version, keep_client=False)
        assert run.wire.startswith(first)
        assert run.wire.endswith(b"204 No Content\r\nconnection: close\r\n\r\n")
        assert b"x: 1" not in run.wire
        assert run.count.status == 204


async def test_a_head_response_keeps_its_length_and_sends_no_body() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n")
    run = await _relay(ours, method="HEAD")
    assert run.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"
    assert run.relayed.complete


async def test_no_head_within_the_response_timeout_is_stalled_before_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, _app = trio.testing.memory_stream_pair()
    start = trio.current_time()
    run = await _relay(ours)
    assert run.relayed.failure is Failure.STALLED
    assert not run.relayed.started
    assert not run.relayed.received
    assert trio.current_time() - start == 30.0


async def test_1xx_responses_do_not_restart_the_response_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, app = trio.testing.memory_stream_pair()

    async def hints() -> None:
        for _ in range(100):  # one every 10 s, never a final head
            await app.send_all(b"HTTP/1.1 103 Early Hints\r\n\r\n")
            await trio.sleep(10.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hints)
        start = trio.current_time()
        run = await _relay(ours)
        nursery.cancel_scope.cancel()
    assert run.relayed.failure is Failure.STALLED
    assert not run.relayed.started
    assert run.relayed.received
    assert trio.current_time() - start == 30.0
    assert run.wire.count(b"103 Early Hints") == 3  # sent on as they came


async def test_a_1xx_then_a_close_is_closed_and_never_spins() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    await app.send_eof()
    run = await _relay(ours)
    assert run.relayed.failure is Failure.CLOSED
    assert run.relayed.received
    assert run.wire == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_a_body_pause_over_the_idle_timeout_is_stalled_after_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    run = await _relay(ours)
    assert run.relayed.failure is Failure.STALLED
    assert run.relayed.started
    assert run.wire.endswith(b"\r\n\r\nabc")  # what came before the pause went out
    assert run.count.bytes_out == 3


async def test_an_invalid_head_is_invalid_with_the_readers_reason() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
    run = await _relay(ours)
    assert run.relayed.failure is Failure.INVALID
    assert run.relayed.detail
    assert not run.relayed.started
    assert run.writes == []


async def test_a_body_cut_short_is_invalid_after_the_head() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    await app.send_eof()
    run = await _relay(ours)
    assert run.relayed.failure is Failure.INVALID
    assert run.relayed.started
    assert run.count.status == 200


async def test_a_reset_upstream_is_reset() -> None:
    ours, _app = trio.testing.memory_stream_pair()
    await ours.aclose()  # our own side closed: receive raises ClosedResourceError
    run = await _relay(ours)
    assert run.relayed.failure is Failure.RESET
    assert not run.relayed.received


async def test_a_client_that_is_gone_is_client_gone() -> None:
    ours, app = trio.testing.memory_stream_pair()
    await app.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    run = await _relay(ours, client=_Recorder(gone=True))
    assert run.relayed.failure is Failure.CLIENT_GONE
    assert run.relayed.started
    assert not run.relayed.complete
