"""Stage store step: run the store writes of requests, alone or several in one transaction
(group commit), and turn what the store raised into responses. Pure (the store is sync).

- A refusal (`ApiError`) is its error response.
- An unavailable store is 503 `store_unavailable` with Retry-After, and the `store_up` gauge
  goes to 0 until a store call succeeds again (set only when it changes).
- A store error a step did not answer itself (an integrity error, a duplicate serial) is
  500 `ledger_failed`: nothing was recorded.
- If a group's commit fails, every step in it is answered 503: none was recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeVar, final

from mesh_ca.server.messages import ApiError, ApiResponse, StoreStep, error_response
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.store import GroupingStore, StateStore, StoreError, StoreUnavailable

__all__ = ["StoreSteps"]

_T = TypeVar("_T")
_STORE_RETRY_SECONDS: Final = 5
_STORE_UNAVAILABLE: Final = ApiError(
    503,
    "store_unavailable",
    "the CA state store is unavailable, so this replica cannot issue or check revocations; "
    "nothing was changed; retry later or use another CA replica",
    (("retry-after", str(_STORE_RETRY_SECONDS)),),
)


@final
class StoreSteps:
    def __init__(self, store: StateStore, metrics: CaMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self._store_up = True  # what metrics.store_up says; set only when it changes

    def run_steps(self, steps: Sequence[StoreStep]) -> list[ApiResponse]:
        """Finish the steps of several requests, in one store transaction when the store can
        (group commit: one commit, one fsync). A step that fails is answered alone; if the
        group's commit fails, every step is answered 503 (none of them was recorded)."""
        store = self._store
        if not isinstance(store, GroupingStore) or len(steps) == 1:
            return [self.finish(step) for step in steps]
        try:
            with store.group(durable=any(step.durable for step in steps)):
                responses = [self.finish(step) for step in steps]
        except StoreUnavailable as exc:
            return [self.store_failed(exc)] * len(steps)
        return responses

    def finish(self, step: StoreStep) -> ApiResponse:
        """`step.run()`, its refusals as responses; a store error the step did not answer
        itself (an integrity error, a duplicate serial) is a 500: nothing was recorded."""

        def run() -> ApiResponse:
            try:
                return step.run()
            except StoreUnavailable:
                raise
            except StoreError as exc:
                raise ApiError(
                    500, "ledger_failed", f"cannot record the certificate: {exc}"
                ) from None

        return self.guarded(run, blocking=True)

    def guarded(self, call: Callable[[], _T], *, blocking: bool) -> _T | ApiResponse:
        """`call()`, its refusals turned into error responses. `blocking`: it used the store,
        so a success means the store is up."""
        try:
            outcome = call()
        except ApiError as exc:
            return error_response(exc)
        except StoreUnavailable as exc:
            return self.store_failed(exc)
        if blocking and not self._store_up and not isinstance(outcome, StoreStep):
            self._store_up = True
            self._metrics.store_up.set(1)
        return outcome

    def store_failed(self, exc: StoreUnavailable) -> ApiResponse:
        self._store_up = False
        self._metrics.store_up.set(0)
        # The detail (database address, driver text) goes to the access log only.
        return error_response(_STORE_UNAVAILABLE, detail=str(exc)[:300])
