"""The CA server's access log: one JSON line a request, on stderr, written in batches.

Through `logging` a line cost ~60 µs of the server's CPU (a `LogRecord`, the handler's
lock, a `write(2)` each): a quarter of a whole keep-alive request through TLS. Here a line
is one JSON encode and a list append, and the lines go out together in one `write(2)`: when
`max_lines` are waiting, at most `interval` seconds after the first one (`run`, a trio task)
and at shutdown (`flush`). A crash can lose at most those lines. Enabled when the
``mesh_ca.server.access`` logger is enabled for INFO (``--log-level info``, the default).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Final, NoReturn, final

import trio

__all__ = ["ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER: Final = "mesh_ca.server.access"
# One encoder for every line: `json.dumps` with `separators` builds a JSONEncoder per call.
_encode: Final = json.JSONEncoder(separators=(",", ":")).encode


@final
class AccessLog:
    def __init__(
        self,
        fd: int = 2,
        *,
        enabled: bool | None = None,
        max_lines: int = 64,
        interval: float = 0.2,
    ) -> None:
        self.fd = fd
        self.enabled = (
            logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
            if enabled is None
            else enabled
        )
        self.max_lines = max_lines
        self.interval = interval
        self._lines: list[str] = []

    def record(self, fields: Mapping[str, object]) -> None:
        """Queue one line (public facts only: never a token or a key)."""
        if not self.enabled:
            return
        self._lines.append(_encode(fields))
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines now; a sink that is gone (EPIPE, closed) drops them."""
        if not self._lines:
            return
        data = memoryview(("\n".join(self._lines) + "\n").encode())
        self._lines.clear()
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # nowhere to log to; the server keeps serving

    async def run(self) -> NoReturn:
        """Flush every `interval` seconds while the server runs."""
        while True:
            await trio.sleep(self.interval)
            self.flush()
