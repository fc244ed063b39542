"""The request-body pump both http directions share (sidecar/transport/body_pump.py), over
in-memory streams with trio's MockClock: re-framing, the two deadlines, who failed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

from meshgate.http import HttpError, RequestHead, RequestReader
from meshgate.http.body_pace import BodyPace
from meshgate.transport.socket_stream import DeadlineStream
from sidecar.transport.body_pump import BodyTimeoutError, pump_body
from sidecar.transport.client_gone import ClientGoneError


@dataclass
class _Count:
    bytes_in: int = 0


def _reader(head: bytes) -> RequestReader:
    reader = RequestReader()
    reader.feed(head)
    assert isinstance(reader.next_event(), RequestHead)
    return reader


async def _pump(
    reader: RequestReader,
    client: trio.abc.Stream,
    count: _Count,
    *,
    chunked: bool,
    pace: BodyPace | None = None,
    answer_clock: DeadlineStream | None = None,
) -> bytes:
    """Run the pump from `client` into a memory pipe; what arrived at the other end."""
    up_send, up_receive = trio.testing.memory_stream_pair()
    source = DeadlineStream(client)
    got = bytearray()
    error: Exception | None = None
    async with trio.open_nursery() as nursery:

        async def collect() -> None:
            while data := await up_receive.receive_some():
                got.extend(data)

        nursery.start_soon(collect)
        try:
            await pump_body(
                reader,
                source,
                source,
                up_send,
                count,
                chunked=chunked,
                idle_seconds=5.0,
                pace=pace or BodyPace(60.0, 0),
                answer_clock=answer_clock,
                answer_seconds=30.0,
            )
        except Exception as exc:  # raised bare, not inside the nursery's group
            error = exc
        finally:
            await up_send.aclose()
    if error is not None:
        raise error
    return bytes(got)


async def test_a_chunked_body_is_re_framed_and_counted() -> None:
    client, peer = trio.testing.memory_stream_pair()
    reader = _reader(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n"
    )
    await peer.send_all(b"2\r\nde\r\n0\r\nx-t: 1\r\n\r\n")
    count = _Count()
    got = await _pump(reader, client, count, chunked=True)
    assert got == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"  # no extension, no trailer
    assert count.bytes_in == 5


async def test_a_length_body_goes_as_it_came() -> None:
    client, peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nab")
    await peer.send_all(b"cdef")
    count = _Count()
    assert await _pump(reader, client, count, chunked=False) == b"abcdef"
    assert count.bytes_in == 6


async def test_a_pause_longer_than_the_idle_timeout_is_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nab")
    with pytest.raises(BodyTimeoutError) as caught:
        await _pump(reader, client, _Count(), chunked=False)
    assert caught.value.kind == "idle"


async def test_a_trickle_under_the_pace_is_slow(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n")

    async def trickle() -> None:
        for _ in range(100):
            await trio.sleep(1.0)  # within the idle timeout each time
            await peer.send_all(b"x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        with pytest.raises(BodyTimeoutError) as caught:
            await _pump(reader, client, _Count(), chunked=False, pace=BodyPace(10.0, 0))
        nursery.cancel_scope.cancel()
    assert caught.value.kind == "slow"


async def test_a_client_that_closes_inside_the_body_is_a_client_fault() -> None:
    client, peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nab")
    await peer.aclose()
    with pytest.raises(HttpError) as caught:
        await _pump(reader, client, _Count(), chunked=False)
    assert caught.value.status_hint == 400


async def test_a_client_reset_is_client_gone() -> None:
    client, _peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nab")
    await client.aclose()  # our own side closed: receive raises ClosedResourceError
    with pytest.raises(ClientGoneError):
        await _pump(reader, client, _Count(), chunked=False)


async def test_each_piece_restarts_the_upstreams_answer_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, peer = trio.testing.memory_stream_pair()
    reader = _reader(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n")
    answer_clock = DeadlineStream(trio.testing.memory_stream_pair()[0])
    answer_clock.receive_deadline = trio.current_time() + 1.0

    async def slowly() -> None:
        await trio.sleep(3.0)
        await peer.send_all(b"ab")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slowly)
        await _pump(reader, client, _Count(), chunked=False, answer_clock=answer_clock)
    assert answer_clock.receive_deadline == pytest.approx(trio.current_time() + 30.0)
