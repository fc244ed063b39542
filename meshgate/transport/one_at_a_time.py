"""The one-task-per-direction guard of the sidecar's own streams (`LeanSocketStream`,
`TlsStream`), as trio's streams have: a second concurrent sender (or receiver) gets
`trio.BusyResourceError` instead of interleaving bytes."""

from __future__ import annotations

from typing import final

import trio

__all__ = ["OneAtATime"]


@final
class OneAtATime:
    """`with guard:` around a send or a receive. A plain class, not a generator context
    manager: it runs on every call of the data path."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._busy = False
        self._message = message

    @property
    def busy(self) -> bool:
        """A task is inside (a call, or its wait for the socket)."""
        return self._busy

    def check(self) -> None:
        """Raise `BusyResourceError` if a task is inside, without entering."""
        if self._busy:
            raise trio.BusyResourceError(self._message)

    def __enter__(self) -> None:
        if self._busy:  # `check`, inline: this runs on every call of the data path
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc: object) -> None:
        self._busy = False
