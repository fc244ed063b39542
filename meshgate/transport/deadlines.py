"""One deadline mechanism for every waiting receive of the lean socket streams of a trio run.

Entering and leaving a `trio.CancelScope` with a deadline costs ~10 µs on this machine, and
the data path used to open one for every receive that had to wait: two per sidecar and
request. Here a waiting receive only puts its stream in a table (a dict insert); one system
task per trio run sleeps until the earliest deadline in the table, and wakes the receives
that are overdue with `trio.lowlevel.notify_closing` on their socket. Such a receive raises
`trio.TooSlowError`, as a cancel scope's deadline made it before; the socket stays open and
usable (the next wait registers it with epoll again). Moving a waiting receive's deadline
later costs nothing (the sweep reads the stream's current deadline); earlier wakes the
sweep sooner.

`notify_closing` wakes every waiter of the socket, so a send waiting on the same socket
(an upload beside its response) wakes too; it sees that its stream is not closed and waits
again (`LeanSocketStream.wait_writable`).
"""

from __future__ import annotations

import math
from typing import Final, Protocol, final

import trio

__all__ = ["Sweepable", "unwatch", "watch"]


class Sweepable(Protocol):
    """A stream whose waiting receive the sweep may end (`LeanSocketStream`)."""

    receive_deadline: float

    def overdue(self) -> None:
        """Called by the sweep once `receive_deadline` has passed while it waits."""


@final
class _Sweep:
    __slots__ = ("_scope", "_wake_at", "waiting")

    def __init__(self) -> None:
        self.waiting: dict[Sweepable, None] = {}  # an insertion-ordered set
        self._wake_at = math.inf
        self._scope: trio.CancelScope | None = None

    def wake_by(self, deadline: float) -> None:
        if deadline < self._wake_at:
            self._wake_at = deadline
            if self._scope is not None:
                self._scope.deadline = deadline

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._wake_at) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            wake_at = math.inf
            for stream in list(self.waiting):
                deadline = stream.receive_deadline
                if deadline <= now:
                    del self.waiting[stream]
                    stream.overdue()
                elif deadline < wake_at:
                    wake_at = deadline
            self._wake_at = wake_at


_SWEEP: trio.lowlevel.RunVar[_Sweep] = trio.lowlevel.RunVar("deadline_sweep")
_NO_SWEEP: Final = _Sweep()  # never run, never watched: always empty


def _sweep() -> _Sweep:
    try:
        return _SWEEP.get()
    except LookupError:
        sweep = _Sweep()
        _SWEEP.set(sweep)
        trio.lowlevel.spawn_system_task(sweep.run, name="meshgate deadline sweep")
        return sweep


def watch(stream: Sweepable) -> None:
    """`stream` waits now; the sweep calls its `overdue` once its deadline has passed.
    Call again after moving the deadline earlier."""
    if stream.receive_deadline == math.inf:
        return
    sweep = _sweep()
    sweep.waiting[stream] = None
    sweep.wake_by(stream.receive_deadline)


def unwatch(stream: Sweepable) -> None:
    """`stream` no longer waits."""
    # A run that never watched a deadline has no sweep: pop from an empty stand-in rather
    # than raise and catch LookupError on every wait.
    _SWEEP.get(_NO_SWEEP).waiting.pop(stream, None)
