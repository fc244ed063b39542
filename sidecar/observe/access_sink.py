"""The access log's JSON sink on stdout or stderr, written in batches.

Through `logging` an access line cost ~30 µs of a sidecar's CPU (a `LogRecord`, the
handler's lock, the formatter, a ``write(2)`` and a flush each), the largest single item
of a kept-alive request in the ledger (docs/benchmarks.md). Here a line is one JSON encode
and a list append; `Observer.request` hands the record's fields straight to `line` when
this is the access logger's only handler, and a `LogRecord` that reaches `emit` (another
caller of the logger) takes the same way. The lines go out together in one write: before
the trio run waits for I/O with nothing left to run (a trio instrument's `before_io_wait`,
so a line is out as soon as the sidecar goes idle, as before), when `max_lines` are waiting
or the oldest is `max_delay_seconds` old, at once outside trio, and at exit (`atexit`). A
crash can lose at most those lines; a sink that is gone drops them and the sidecar keeps
serving.
"""

from __future__ import annotations

import atexit
import json
import logging
import time
import weakref
from collections.abc import Mapping
from typing import Any, Final, TextIO, final

import trio

__all__ = ["BatchedAccessSink"]

# One encoder for every line: `json.dumps` with `separators` builds a JSONEncoder per call.
_encode: Final = json.JSONEncoder(default=str, separators=(",", ":")).encode
_LIVE: weakref.WeakSet[BatchedAccessSink] = weakref.WeakSet()


@final
class BatchedAccessSink(logging.Handler):
    """A `logging.Handler` for the ``meshgate.access`` logger, with a faster `line`."""

    def __init__(
        self, stream: TextIO, *, max_lines: int = 64, max_delay_seconds: float = 0.05
    ) -> None:
        super().__init__()
        self.stream = stream
        self.max_lines = max_lines
        self.max_delay_seconds = max_delay_seconds
        self._lines: list[str] = []
        self._first_at = 0.0
        _LIVE.add(self)

    def line(self, fields: Mapping[str, Any]) -> None:
        """Queue one access line (public facts only: never a token or a key)."""
        lines = self._lines
        lines.append(_encode(fields))
        if len(lines) >= self.max_lines:
            self.flush()
        elif len(lines) == 1:
            self._flush_later()

    def emit(self, record: logging.LogRecord) -> None:
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            self.line(access)
        else:  # not an access record: the formatter's line (set by setup_logging)
            self._lines.append(self.format(record))
            self.flush()

    def _flush_later(self) -> None:
        """The first line of a batch: flush when the run goes idle (or now, outside trio)."""
        self._first_at = time.monotonic()
        try:
            if _INSTRUMENTED.get(None) is not self:
                trio.lowlevel.add_instrument(_FlushBeforeWait(self))
                _INSTRUMENTED.set(self)
        except RuntimeError:  # not inside trio (tools, tests): write now
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines now."""
        if not self._lines:
            return
        data = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # nowhere to log to (EPIPE, closed): the sidecar keeps serving

    def close(self) -> None:
        self.flush()
        super().close()


@final
class _FlushBeforeWait(trio.abc.Instrument):
    """Writes the waiting lines before the run blocks, or when they are getting old."""

    def __init__(self, sink: BatchedAccessSink) -> None:
        self.sink = sink

    def before_io_wait(self, timeout: float) -> None:
        sink = self.sink
        if sink._lines and (
            timeout > 0 or time.monotonic() - sink._first_at >= sink.max_delay_seconds
        ):
            sink.flush()


_INSTRUMENTED: trio.lowlevel.RunVar[BatchedAccessSink | None] = trio.lowlevel.RunVar(
    "access_sink_instrumented"
)


@atexit.register
def _flush_all() -> None:
    for sink in list(_LIVE):
        sink.flush()
