"""The TLS stream's send lock: FIFO like `trio.StrictFIFOLock`, without its bookkeeping.

A TLS stream flushes OpenSSL's outgoing bytes under one lock so that records reach the
transport in the order OpenSSL made them (a sender and a receiver's KeyUpdate reply may
both flush). Nearly always nobody holds it. trio's lock then still costs a task lookup and
a parking-lot breaker registered and removed (`inspect.getcoroutinestate` each time) on
every acquire; here `try_acquire` (the lean path's) takes a free lock with one attribute
test. A waiter parks and is handed the lock by `release`, in arrival order; the holder
always releases in `finally`, so no breaker is needed.
"""

from __future__ import annotations

from typing import final

import trio

__all__ = ["SendLock"]


@final
class SendLock:
    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False  # invariant: nobody waits while it is False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (no checkpoint); False otherwise."""
        if self._held:
            return False
        self._held = True
        return True

    async def acquire(self) -> None:
        """Take the lock, waiting in line behind the holder and earlier waiters. A
        checkpoint either way, as trio's lock: over a transport that keeps trio's stream
        contract, the order in which tasks run stays what it was."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.try_acquire():
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._waiters.park()  # woken by `release` as the new holder

    def release(self) -> None:
        if self._waiters:
            self._waiters.unpark()  # hand over: the lock stays held, by the next in line
        else:
            self._held = False
