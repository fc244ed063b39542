"""LeanSocketStream over real loopback sockets, and DeadlineStream over memory streams."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from meshgate.transport.socket_stream import (
    DeadlineStream,
    LeanSocketStream,
    address_text,
    lean,
    peer_address,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pair() -> AsyncIterator[tuple[LeanSocketStream, trio.SocketStream]]:
    """A lean stream and a plain trio stream, connected over 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    stream = lean(client)
    assert isinstance(stream, LeanSocketStream)
    try:
        yield stream, server
    finally:
        await stream.aclose()
        await server.aclose()


async def test_taking_over_a_socket_stream_detaches_it(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await stream.send_all(b"ping")
    assert await peer.receive_some(10) == b"ping"
    await peer.send_all(b"pong")
    assert await stream.receive_some(10) == b"pong"
    assert lean(stream) is stream


async def test_a_large_send_completes_across_partial_writes(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    payload = bytes(range(256)) * 40_000  # ~10 MB: far more than the socket buffers
    got = bytearray()

    async def drain() -> None:
        while len(got) < len(payload):
            got.extend(await peer.receive_some(1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await stream.send_all(payload)
    assert got == payload


async def test_a_receive_past_its_deadline_is_too_slow(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    stream.receive_deadline = trio.current_time() + 0.05
    with pytest.raises(trio.TooSlowError):
        await stream.receive_some(10)
    # The stream is still usable: nothing was consumed.
    stream.receive_deadline = trio.current_time() + 5
    await peer.send_all(b"late")
    assert await stream.receive_some(10) == b"late"


async def test_data_already_there_is_returned_whatever_the_deadline(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await peer.send_all(b"ready")
    await trio.lowlevel.wait_readable(stream.socket)  # the bytes are there
    stream.receive_deadline = trio.current_time() - 1  # already past
    assert await stream.receive_some(10) == b"ready"


async def test_a_send_to_a_peer_that_never_reads_is_too_slow(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, _ = pair
    stream.send_deadline = trio.current_time() + 0.2
    with pytest.raises(trio.TooSlowError):
        await stream.send_all(b"x" * 50_000_000)


async def test_extending_the_deadline_reaches_a_receive_that_waits(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    first_deadline = trio.current_time() + 1
    stream.receive_deadline = first_deadline
    async with trio.open_nursery() as nursery:

        async def extend_then_send() -> None:
            while not stream.waiting_to_receive:  # the receive below is waiting
                await trio.sleep(0.001)
            stream.extend_receive_deadline(trio.current_time() + 30)
            await trio.sleep_until(first_deadline + 0.1)  # past the first deadline
            await peer.send_all(b"after")

        nursery.start_soon(extend_then_send)
        assert await stream.receive_some(10) == b"after"


async def test_interrupting_a_waiting_receive_makes_it_too_slow(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, _ = pair
    async with trio.open_nursery() as nursery:

        async def interrupt() -> None:
            await trio.sleep(0.05)
            stream.interrupt_receive()

        nursery.start_soon(interrupt)
        with trio.fail_after(5), pytest.raises(trio.TooSlowError):
            await stream.receive_some(10)


async def test_closing_wakes_a_waiting_receive_and_later_calls_fail(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, _ = pair
    async with trio.open_nursery() as nursery:

        async def close_soon() -> None:
            await trio.sleep(0.05)
            await stream.aclose()

        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(10)
    await stream.aclose()  # twice is fine


async def test_a_reset_by_the_peer_is_a_broken_resource(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await peer.aclose()
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some(10)


async def test_send_eof_half_closes(pair: tuple[LeanSocketStream, trio.SocketStream]) -> None:
    stream, peer = pair
    await stream.send_all(b"request")
    await stream.send_eof()
    got = b""
    while chunk := await peer.receive_some(100):
        got += chunk
    assert got == b"request"
    await peer.send_all(b"reply after eof")
    assert await stream.receive_some(100) == b"reply after eof"


async def test_a_cancelled_scope_stops_a_call_even_when_data_is_ready(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await peer.send_all(b"ready")
    await trio.sleep(0.05)
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_some(10)
        pytest.fail("a cancelled call returned")
    assert await stream.receive_some(10) == b"ready"


async def test_calls_that_never_wait_still_let_other_tasks_run(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await peer.send_all(b"x" * 1000)
    await trio.sleep(0.05)
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()  # let it start
        before = ran
        for _ in range(64):  # every receive finds a byte ready: no wait at all
            assert await stream.receive_some(1) == b"x"
        assert ran - before >= 3
        nursery.cancel_scope.cancel()


async def test_two_concurrent_receivers_are_refused(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_some, 10)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.receive_some(10)
        await peer.send_all(b"x")


async def test_a_deadline_stream_gives_memory_streams_the_same_deadlines() -> None:
    left, right = trio.testing.memory_stream_pair()
    timed = lean(left)
    assert isinstance(timed, DeadlineStream)
    timed.receive_deadline = trio.current_time() + 0.05
    with pytest.raises(trio.TooSlowError):
        await timed.receive_some(10)
    timed.receive_deadline = trio.current_time() + 5
    await right.send_all(b"hello")
    assert await timed.receive_some(10) == b"hello"
    async with trio.open_nursery() as nursery:

        async def interrupt() -> None:
            await trio.testing.wait_all_tasks_blocked()
            timed.interrupt_receive()

        nursery.start_soon(interrupt)
        with pytest.raises(trio.TooSlowError):
            await timed.receive_some(10)
    await timed.send_all(b"back")
    assert await right.receive_some(10) == b"back"
    await timed.send_eof()
    assert await right.receive_some(10) == b""


async def test_a_taken_tcp_socket_sends_small_writes_at_once() -> None:
    """`TCP_NODELAY` is set on every TCP socket taken, not only those trio made."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        raw = socket.create_connection(server.getsockname())
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        stream = LeanSocketStream(raw)
        try:
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            await stream.aclose()


async def test_closing_without_a_checkpoint_wakes_a_waiting_receive_and_sends_a_fin(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    """`close()` (the outbound's end of a finished connection) wakes a call still waiting
    on the socket, as `aclose` does, and the peer sees a clean end, not a reset."""
    stream, peer = pair
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_some(10)

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.waiting_to_receive
        stream.close()
    assert await peer.receive_some(10) == b""
    stream.close()  # twice is fine
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")


async def test_closing_with_no_call_in_progress_closes_the_socket(
    pair: tuple[LeanSocketStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await stream.send_all(b"last")
    stream.close()
    assert stream.socket.fileno() == -1
    assert await peer.receive_some(10) == b"last"
    assert await peer.receive_some(10) == b""


async def test_a_stream_told_its_peer_and_protocol_at_accept_uses_them() -> None:
    """An accept loop passes ``tcp=`` and ``peer=`` (no enum conversions, no getpeername);
    TCP_NODELAY is set all the same, and `peer_address` reports what it was told."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, address = server.accept()
        stream = LeanSocketStream(accepted, tcp=True, peer=address_text(address))
        try:
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert peer_address(stream) == f"127.0.0.1:{client.getsockname()[1]}"
            assert address_text(("::1", 8080, 0, 0)) == "[::1]:8080"
        finally:
            await stream.aclose()
            client.close()
