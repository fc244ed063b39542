"""Group commit: the store steps of concurrent issuance requests in one store transaction.

With handlers inline on the event loop each bootstrap ended in its own SQLite COMMIT and
fsync (token consumption is durable). Requests that reach their store step in the same
scheduler round now share one: the first to arrive leads. It lets the other runnable tasks
run once (one checkpoint), then finishes every step queued by then with
`CaService.run_steps` (one transaction, one commit) and answers their owners; steps queued
meanwhile get the next leader. No background task and no timer: a lone request
waits one scheduler round, as long as any other checkpoint. The shell sends only durable
steps here: a renewal's ledger row commits without an fsync, and grouping renewals saved
no CPU (measured) while holding each response back for the others' signing.

A submitted step always completes: waiting is shielded from cancellation (it is bounded by
the batches ahead of it), so a connection cancelled mid-wait can never leave a step half
run or a batch without its leader; its response is then simply not sent.
"""

from __future__ import annotations

import json
import logging
from typing import Final, final

import trio

from mesh_ca.server.core import (
    INTERNAL_ERROR,
    ApiResponse,
    CaService,
    StoreStep,
    error_response,
)

__all__ = ["GroupCommit"]

log = logging.getLogger("mesh_ca.server")
MAX_STEPS: Final = 64  # a batch signs inside its transaction: bound the loop's pause


@final
class _Waiter:
    __slots__ = ("called", "response", "step")

    def __init__(self, step: StoreStep) -> None:
        self.step = step
        self.response: ApiResponse | None = None
        self.called = trio.Event()  # answered (response set), or asked to lead (not set)


@final
class GroupCommit:
    def __init__(self, service: CaService, *, max_steps: int = MAX_STEPS) -> None:
        self.service = service
        self.max_steps = max_steps
        self._queue: list[_Waiter] = []
        self._leading = False  # invariant: the queue is empty whenever nobody leads

    async def run(self, step: StoreStep) -> ApiResponse:
        """Finish `step` together with the others queued in this scheduler round."""
        waiter = _Waiter(step)
        self._queue.append(waiter)
        with trio.CancelScope(shield=True):
            if self._leading:
                await waiter.called.wait()
            else:
                self._leading = True
            if waiter.response is None:  # leading: the waiter is first in the queue
                await trio.lowlevel.checkpoint()
                batch = self._queue[: self.max_steps]
                del self._queue[: self.max_steps]
                self._finish(batch)
                if self._queue:
                    self._queue[0].called.set()  # the next batch's leader
                else:
                    self._leading = False
        assert waiter.response is not None
        return waiter.response

    def _finish(self, batch: list[_Waiter]) -> None:
        self.service.metrics.observe_group(len(batch))
        try:
            responses = self.service.run_steps([waiter.step for waiter in batch])
        except Exception as exc:  # every waiter must be answered: none may hang
            log.exception(json.dumps({"event": "store_group_failed", "error": str(exc)[:300]}))
            responses = [error_response(INTERNAL_ERROR)] * len(batch)
        for waiter, response in zip(batch, responses, strict=True):
            waiter.response = response
            waiter.called.set()
