"""The one deadline sweep of a trio run (meshgate/transport/deadlines.py) over real loopback
sockets: a waiting receive ends with TooSlowError at its own deadline, the socket stays
usable, and a send waiting on the same socket is not disturbed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from meshgate.transport.socket_stream import LeanSocketStream, lean

pytestmark = pytest.mark.integration


async def _pair(
    listener: trio.SocketListener, port: int
) -> tuple[LeanSocketStream, trio.SocketStream]:
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    stream = lean(client)
    assert isinstance(stream, LeanSocketStream)
    return stream, server


@pytest.fixture
async def pairs() -> AsyncIterator[list[tuple[LeanSocketStream, trio.SocketStream]]]:
    """Three lean streams, each connected to a plain trio stream over 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        made = [await _pair(listeners[0], port) for _ in range(3)]
    try:
        yield made
    finally:
        for stream, peer in made:
            await stream.aclose()
            await peer.aclose()


async def test_each_waiting_receive_ends_at_its_own_deadline_and_the_socket_stays_usable(
    pairs: list[tuple[LeanSocketStream, trio.SocketStream]], autojump_clock: trio.abc.Clock
) -> None:
    start = trio.current_time()
    ended: dict[int, float] = {}

    async def wait(index: int, stream: LeanSocketStream, after: float) -> None:
        stream.receive_deadline = start + after
        with pytest.raises(trio.TooSlowError):
            await stream.receive_some(10)
        ended[index] = trio.current_time() - start

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for index, (stream, _) in enumerate(pairs):
                nursery.start_soon(wait, index, stream, (0.3, 0.1, 0.2)[index])
    assert ended == {1: pytest.approx(0.1), 2: pytest.approx(0.2), 0: pytest.approx(0.3)}
    for stream, peer in pairs:  # the sweep's wake-up closed nothing
        stream.receive_deadline = trio.current_time() + 5
        await peer.send_all(b"later")
        assert await stream.receive_some(10) == b"later"
        await stream.send_all(b"back")
        assert await peer.receive_some(10) == b"back"


async def test_a_send_waiting_on_the_same_socket_survives_the_receives_timeout(
    pairs: list[tuple[LeanSocketStream, trio.SocketStream]],
) -> None:
    stream, peer = pairs[0]
    payload = b"x" * 20_000_000  # more than the socket buffers: the send has to wait
    stream.receive_deadline = trio.current_time() + 0.1
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            with pytest.raises(trio.TooSlowError):
                await stream.receive_some(10)  # the sweep wakes the waiting send too
            while len(got) < len(payload):  # which waits again and finishes
                got.extend(await peer.receive_some(1 << 16))
    assert len(got) == len(payload)


async def test_moving_a_waiting_receives_deadline_earlier_wakes_it_sooner(
    pairs: list[tuple[LeanSocketStream, trio.SocketStream]],
) -> None:
    far, _ = pairs[0]
    near, _ = pairs[1]
    far.receive_deadline = trio.current_time() + 60
    near.receive_deadline = trio.current_time() + 60
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def far_waits() -> None:
                with pytest.raises(trio.TooSlowError):
                    await far.receive_some(10)

            nursery.start_soon(far_waits)
            while not far.waiting_to_receive:
                await trio.sleep(0.001)

            async def pull_in() -> None:
                while not near.waiting_to_receive:
                    await trio.sleep(0.001)
                near.extend_receive_deadline(trio.current_time() + 0.1)

            nursery.start_soon(pull_in)
            with pytest.raises(trio.TooSlowError):
                await near.receive_some(10)  # long before its first 60 s
            far.interrupt_receive()
