"""The shared streams (`meshgate.transport`) pass trio's stream conformance checks over real
TCP sockets on 127.0.0.1, not only over in-memory streams: the plain socket stream, the TLS
stream over it, and the TLS stream over trio's own `SocketStream`.

The lean socket stream yields to the scheduler only when the kernel says wait (or every
16th call), where trio's contract wants every call to be a checkpoint: that deviation is
deliberate (it saves ~30 µs a call on the data path). Here the streams run with
`checkpoint_every=1`, which keeps the contract, and the deviation has tests of its own
(below, and in tests/test_lean_socket.py).

Found by these checks and fixed: `LeanSocketStream.send_all` after `send_eof` raised
`BrokenResourceError` (the kernel's EPIPE) where the contract says `ClosedResourceError`,
and `wait_send_all_might_not_block` did not hold the send guard, so a concurrent `send_eof`
was not refused with `BusyResourceError`.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from meshgate.transport.mtls import mesh_context
from meshgate.transport.socket_stream import LeanSocketStream
from meshgate.transport.tls_stream import TlsStream
from tests.pki import TestPki as Pki

pytestmark = pytest.mark.integration

_Contexts = tuple[ssl.SSLContext, ssl.SSLContext]
_Pair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


@pytest.fixture(scope="module")
def contexts() -> _Contexts:
    pki = Pki()
    server, client = pki.leaf(pki.spiffe_id("ns", "server")), pki.leaf(pki.spiffe_id("ns", "c"))
    return (
        mesh_context("server", server.chain_pem(), server.key_pem(), pki.bundles),
        mesh_context("client", client.chain_pem(), client.key_pem(), pki.bundles),
    )


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    return client, server


async def _lean_pair(checkpoint_every: int = 1) -> tuple[LeanSocketStream, LeanSocketStream]:
    client, server = await _tcp_pair()
    return (
        LeanSocketStream.take(client, checkpoint_every=checkpoint_every),
        LeanSocketStream.take(server, checkpoint_every=checkpoint_every),
    )


async def _tls_pair(
    contexts: _Contexts, transports: tuple[trio.abc.Stream, trio.abc.Stream]
) -> tuple[TlsStream, TlsStream]:
    client = TlsStream(transports[0], contexts[1], server_side=False)
    server = TlsStream(transports[1], contexts[0], server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


def _raw(sock: object) -> socket.socket:
    """The stdlib socket under a trio socket or a lean stream's socket."""
    inner = getattr(sock, "_sock", sock)
    assert isinstance(inner, socket.socket)
    return inner


def _fill_socket(sock: socket.socket) -> None:
    """Send until the kernel refuses even one byte: the next send must wait for the peer."""
    sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
    for size in (65536, 4096, 1):
        while True:
            try:
                sock.send(b"x" * size)
            except BlockingIOError:
                break


def _fill_tls(stream: TlsStream) -> None:
    """Queue whole TLS records until the socket is full. A record the kernel took only in
    part is put back in the stream's outgoing buffer, where its next send continues it (a
    cancelled send_all would tear the record stream, so the public API cannot clog it)."""
    transport = stream.transport
    assert isinstance(transport, LeanSocketStream | trio.SocketStream)
    sock = _raw(transport.socket)
    sock.setblocking(False)  # noqa: FBT003
    while True:
        stream._ssl.write(b"y" * 16384)
        data = memoryview(stream._outgoing.read())
        while data:
            try:
                data = data[sock.send(data) :]
            except BlockingIOError:
                stream._outgoing.write(bytes(data))
                return


def _makers(
    make: Callable[[], Awaitable[_Pair]], fill: Callable[[_Pair], None]
) -> tuple[Callable[[], Awaitable[_Pair]], Callable[[], Awaitable[_Pair]]]:
    async def clogged() -> _Pair:
        pair = await make()
        fill(pair)  # both directions: the two-way checks flip the pair
        return pair

    return make, clogged


async def test_the_lean_socket_stream_conforms_over_loopback_tcp() -> None:
    def fill(pair: _Pair) -> None:
        for stream in pair:
            assert isinstance(stream, LeanSocketStream)
            _fill_socket(stream.socket)

    await trio.testing.check_half_closeable_stream(*_makers(_lean_pair, fill))


async def test_the_tls_stream_over_the_lean_socket_stream_conforms_over_loopback_tcp(
    contexts: _Contexts,
) -> None:
    async def make() -> _Pair:
        return await _tls_pair(contexts, await _lean_pair())

    def fill(pair: _Pair) -> None:
        for stream in pair:
            assert isinstance(stream, TlsStream)
            _fill_tls(stream)

    await trio.testing.check_half_closeable_stream(*_makers(make, fill))


async def test_the_tls_stream_over_trios_socket_stream_conforms_over_loopback_tcp(
    contexts: _Contexts,
) -> None:
    async def make() -> _Pair:
        return await _tls_pair(contexts, await _tcp_pair())

    def fill(pair: _Pair) -> None:
        for stream in pair:
            assert isinstance(stream, TlsStream)
            _fill_tls(stream)

    await trio.testing.check_half_closeable_stream(*_makers(make, fill))


async def test_a_graceful_close_sends_close_notify_so_the_peer_reads_a_clean_end(
    contexts: _Contexts,
) -> None:
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    await server.send_all(b"last words")
    await server.aclose()  # close_notify, then the socket
    assert await client.receive_some() == b"last words"
    assert await client.receive_some() == b""  # not a truncation (BrokenResourceError)
    await client.aclose()


async def test_a_close_without_close_notify_over_tcp_is_a_truncation(contexts: _Contexts) -> None:
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    await server.send_all(b"cut")
    await server.transport.aclose()  # the socket only: no close_notify
    assert await client.receive_some() == b"cut"
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    await client.aclose()
    await server.aclose()


async def test_over_a_default_lean_socket_a_tls_receive_of_buffered_bytes_does_not_yield_but_is_cancellable(  # noqa: E501
    contexts: _Contexts,
) -> None:
    # The documented deviation: with the default `checkpoint_every`, a call that need not
    # wait is only a cancel point, not a schedule point.
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    await server.send_all(b"ab")
    assert await client.receive_some(1) == b"a"  # b"b" stays buffered in the stream
    ran: list[str] = []

    async def other() -> None:
        ran.append("other task")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)  # runs at this task's next yield
        assert await client.receive_some(1) == b"b"
        assert ran == []  # the receive did not yield
    await server.send_all(b"c")
    await trio.lowlevel.wait_readable(_raw(client.transport.socket))  # type: ignore[attr-defined]
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.receive_some(1)
    assert scope.cancelled_caught
    assert await client.receive_some(1) == b"c"  # nothing was lost to the cancellation
    await client.aclose()
    await server.aclose()


# Over a default lean socket the TLS stream reads and writes the socket itself (one layer):
# the tests below run that path, which the conformance checks above (checkpoint_every=1,
# every call through the lean stream's own methods) do not.


async def test_over_a_default_lean_socket_a_close_notify_read_with_the_last_bytes_ends_the_stream(
    contexts: _Contexts,
) -> None:
    # The peer half-closes (close_notify) right after its last bytes and keeps its socket
    # open. OpenSSL reads the close_notify while returning those bytes; the next receive
    # must report the end from that state, not wait on the socket for bytes that never
    # come (a receive that went to the socket first whenever the BIO was empty hung here).
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    await server.send_all(b"last")
    await server.send_eof()
    await trio.lowlevel.wait_readable(_raw(client.transport.socket))  # type: ignore[attr-defined]
    with trio.fail_after(10):
        assert await client.receive_some() == b"last"
        assert await client.receive_some() == b""
    await client.send_all(b"reply after the half-close")
    assert await server.receive_some() == b"reply after the half-close"
    await client.aclose()
    await server.aclose()


async def test_over_a_default_lean_socket_large_transfers_both_ways_arrive_whole(
    contexts: _Contexts,
) -> None:
    # Megabytes each way at once: sends the kernel takes in part, waits for writability
    # under the send lock, receives that find a partial record.
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    size = 4 * 1024 * 1024
    payloads = {id(client): bytes(range(256)) * (size // 256), id(server): b"\x5a" * size}
    received: dict[int, bytes] = {}

    async def send(stream: TlsStream) -> None:
        data = payloads[id(stream)]
        for start in range(0, size, 300_000):
            await stream.send_all(data[start : start + 300_000])

    async def receive(stream: TlsStream, peer: TlsStream) -> None:
        parts = bytearray()
        while len(parts) < size:
            parts += await stream.receive_some()
        received[id(peer)] = bytes(parts)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, client)
            nursery.start_soon(send, server)
            nursery.start_soon(receive, client, server)
            nursery.start_soon(receive, server, client)
    assert received == payloads
    await client.aclose()
    await server.aclose()


async def test_over_a_default_lean_socket_the_transports_receive_deadline_bounds_a_tls_receive(
    contexts: _Contexts,
) -> None:
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
    transport = client.transport
    assert isinstance(transport, LeanSocketStream)
    transport.receive_deadline = trio.current_time() + 0.05
    with pytest.raises(trio.TooSlowError):
        await client.receive_some()  # the wait is the lean stream's: its deadline applies
    transport.receive_deadline = math.inf
    await server.send_all(b"still usable")
    assert await client.receive_some() == b"still usable"
    await client.aclose()
    await server.aclose()


async def test_over_a_default_lean_socket_tls_sends_that_never_wait_still_let_others_run(
    contexts: _Contexts,
) -> None:
    client, server = await _tls_pair(contexts, await _lean_pair(checkpoint_every=16))
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
        for _ in range(64):  # the kernel takes each send at once: no wait at all
            await client.send_all(b"x")
        assert ran - before >= 3  # every 16th call in a row yielded
        nursery.cancel_scope.cancel()
    received = b""
    while len(received) < 64:
        received += await server.receive_some()
    assert received == b"x" * 64
    await client.aclose()
    await server.aclose()
