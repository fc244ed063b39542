"""Client traffic that counts every failure: new connections, and long-lived ones.

Both loops run in the test's trio loop against a sidecar's outbound port (an echo app at
the far end). A new-connection request fails when it does not come back byte for byte.
A long-lived connection sends a numbered line and waits for its echo, over and over. The
mesh closes it, by design, when the SVID of either end that it was made with expires
("a connection never outlives its peer's SVID"); that close is expected only from that
moment on, so the loop reads both sidecars' notAfter before connecting (a rotation in
between only moves the real close later) and counts an earlier close as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import trio

from tests.integration.ca_mesh import CertWatch
from tests.procs import EchoApp, exchange

# The close is scheduled on the trio clock from the wall-clock notAfter: allow a little.
_CLOSE_SLACK = timedelta(seconds=1)


@dataclass
class LongLived:
    """One long-lived connection: what it carried and how it ended."""

    opened_at: datetime
    earliest_close: datetime  # the first notAfter among the SVIDs it may have been made with
    serials_at_open: tuple[str, ...] = ()
    serials_at_last_ok: tuple[str, ...] = ()
    exchanges: int = 0
    closed_at: datetime | None = None


@dataclass
class Traffic:
    new_ok: int = 0
    long_ok: int = 0
    errors: list[str] = field(default_factory=list)
    long_lived: list[LongLived] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors.append(f"{datetime.now(UTC).isoformat()} {text}")


async def new_connections(port: int, traffic: Traffic, *, interval: float = 0.05) -> None:
    """One request per new connection, forever; every failure is recorded."""
    n = 0
    while True:
        payload = f"new connection request {n}\n".encode()
        try:
            got = await exchange(port, payload, timeout=10)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            traffic.error(f"new connection {n}: {exc!r}")
        else:
            if got == payload:
                traffic.new_ok += 1
            else:
                traffic.error(f"new connection {n}: sent {payload!r}, got {got!r}")
        n += 1
        await trio.sleep(interval)


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def long_lived_connections(
    port: int, traffic: Traffic, watch: CertWatch, *, interval: float = 0.1
) -> None:
    """Keep one connection open and busy; when the mesh closes it, open the next one."""
    while True:
        earliest = min(view.not_after for view in await watch.read())
        conn = LongLived(datetime.now(UTC), earliest)
        traffic.long_lived.append(conn)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError as exc:
            traffic.error(f"long-lived connect: {exc!r}")
            await trio.sleep(interval)
            continue
        async with stream:
            while True:
                payload = f"long-lived {len(traffic.long_lived)} line {conn.exchanges}\n".encode()
                try:
                    with trio.fail_after(10):
                        await stream.send_all(payload)
                        got = await _receive_exactly(stream, len(payload))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    got = b""
                except trio.TooSlowError:
                    traffic.error(f"long-lived exchange {conn.exchanges}: no echo within 10 s")
                    break
                if got == payload:
                    conn.exchanges += 1
                    traffic.long_ok += 1
                    if conn.exchanges == 1:  # handshakes done: read after them, fresh
                        conn.serials_at_open = watch.serials(await watch.read())
                    else:  # the watch's last reading, older than this exchange
                        conn.serials_at_last_ok = watch.serials(watch.latest)
                    await trio.sleep(interval)
                    continue
                conn.closed_at = datetime.now(UTC)
                if conn.closed_at < conn.earliest_close - _CLOSE_SLACK:
                    traffic.error(
                        f"long-lived connection closed at {conn.closed_at.isoformat()} after "
                        f"{conn.exchanges} exchanges, before the SVID expiry "
                        f"{conn.earliest_close.isoformat()} (got {got!r})"
                    )
                break


def spanned_a_rotation_of_each(conn: LongLived) -> bool:
    """True when every sidecar's serial changed while this connection kept working."""
    before, after = conn.serials_at_open, conn.serials_at_last_ok
    return bool(before and after) and all(b != a for b, a in zip(before, after, strict=True))


async def nothing_gets_through(port: int, app: EchoApp) -> None:
    """A request through `port` gets no byte back (a close or a reset), and the app behind
    it sees no connection."""
    seen = app.connections
    try:
        got = await exchange(port, b"must not pass", timeout=10)
    except (OSError, trio.BrokenResourceError):
        got = b""
    assert got == b""
    assert app.connections == seen, "the app saw a connection"
