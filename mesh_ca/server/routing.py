"""Stage 1 of a CA API request, route: (method, path) to its handler, or 404/405. Pure.

A route table maps a path to ``(method, handler, blocking)``; `blocking` says the handler
touches the store or signs, so a threaded shell runs it in a worker thread. A handler takes
the `CaService` (its stages), the request, `now` and the monotonic time, and returns a
response or the `StoreStep` that finishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse, StoreStep

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["Handler", "Route", "route"]

Handler: TypeAlias = Callable[["CaService", ApiRequest, datetime, float], ApiResponse | StoreStep]
Route: TypeAlias = tuple[str, Handler, bool]


def route(table: Mapping[str, Route], method: str, path: str) -> tuple[Handler, bool]:
    """The handler for (method, path) and whether it blocks (store or signing)."""
    entry = table.get(path)
    if entry is None:
        raise ApiError(404, "not_found", f"no endpoint {path}")
    want, handler, blocking = entry
    if method != want:
        raise ApiError(
            405, "method_not_allowed", f"{path} takes {want}, not {method}", (("allow", want),)
        )
    return handler, blocking
