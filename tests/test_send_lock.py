"""The TLS stream's send lock (meshgate/transport/send_lock.py): `try_acquire` takes a free
lock without a checkpoint, `acquire` is a checkpoint as trio's lock; contended it is handed
over in arrival order, and a waiter cancelled in line never holds it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshgate.transport.send_lock import SendLock

pytestmark = pytest.mark.unit


async def test_a_free_lock_is_taken_by_try_acquire_without_a_checkpoint() -> None:
    lock = SendLock()
    with trio.testing.assert_no_checkpoints():
        assert lock.try_acquire()
    assert lock.locked()
    assert not lock.try_acquire()
    lock.release()
    assert not lock.locked()
    with trio.testing.assert_checkpoints():
        await lock.acquire()  # acquire is a checkpoint even when free, as trio's lock
    lock.release()


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = SendLock()
    order: list[int] = []

    async def holder(index: int) -> None:
        await lock.acquire()
        try:
            order.append(index)
            await trio.sleep(0)
        finally:
            lock.release()

    assert lock.try_acquire()
    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(holder, index)
            await trio.testing.wait_all_tasks_blocked()
        lock.release()
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_a_waiter_cancelled_in_line_never_holds_the_lock() -> None:
    lock = SendLock()
    got: list[str] = []

    async def wait_for_it(name: str, scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await lock.acquire()
            got.append(name)
            lock.release()

    assert lock.try_acquire()
    first: list[trio.CancelScope] = []
    second: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_it, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait_for_it, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        first[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        lock.release()
    assert got == ["second"]
    assert not lock.locked()
