"""Server-side TLS over a trio stream through `ssl.MemoryBIO`: the few operations the CA needs.

`trio.SSLStream` is general (concurrent send and receive, renegotiation-era retry loops,
conflict detection, a checkpoint per `_retry`); the CA serves one request at a time per
connection, so a request costs one wait for the socket, one socket receive, one
`SSLObject.read`, one `write` and one socket send here. On a `trio.SocketStream` the socket
is read and written directly (`os.read`/`os.write` on its non-blocking descriptor): trio's
socket methods add a scheduler round (`cancel_shielded_checkpoint`) to every call that
succeeds at once. A read with nothing buffered waits in `wait_readable` first (the next
request is not there yet, so trying first only costs an EAGAIN and an SSLWantReadError);
a write waits in `wait_writable` only when it would block. Errors from OpenSSL or the peer
become `trio.BrokenResourceError` with the cause kept; an alert OpenSSL wants to send (a
failed handshake) is sent first.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Final, final

import trio

__all__ = ["ServerTls"]

_READ_SIZE: Final = 65536


@final
class ServerTls:
    def __init__(self, transport: trio.abc.Stream, context: ssl.SSLContext) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # The raw descriptor when the transport is a real socket (-1: use the stream API).
        self._fd = -1
        if isinstance(transport, trio.SocketStream):
            # trio sets it too; explicit, as every sidecar socket: a small record never
            # waits for the peer's delayed ACK (~40 ms on a kept-alive connection).
            transport.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # noqa: FBT003
            self._fd = transport.socket.fileno()

    async def do_handshake(self) -> None:
        """Complete the handshake. Fails closed: any TLS error breaks the connection."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("peer closed during the handshake") from None
            except ssl.SSLError as exc:
                await self._flush_quietly()  # the alert, so the peer learns why
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._flush()

    def getpeercert(self) -> bytes | None:
        """The client certificate (DER) that OpenSSL verified against the bundle, if any."""
        return self._ssl.getpeercert(binary_form=True)

    async def receive_some(self) -> bytes:
        """Decrypted bytes; b"" when the peer closed (with or without close_notify)."""
        while True:
            buffered = self._incoming.pending or self._ssl.pending()
            if buffered:
                try:
                    data = self._ssl.read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    pass  # a partial record: more bytes are needed
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                except ssl.SSLError as exc:
                    await self._flush_quietly()
                    raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
                else:
                    if self._outgoing.pending:
                        await self._flush()
                    return data
            if self._outgoing.pending:  # e.g. the answer to a KeyUpdate
                await self._flush()
            # With nothing buffered (the usual case: the peer is still writing its next
            # request) wait for the socket first, rather than have OpenSSL raise
            # SSLWantReadError and the socket EAGAIN on every request.
            if not await self._fill(wait_first=not buffered):
                return b""

    async def send_all(self, data: bytes) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.transport)

    async def discard_incoming(self, max_bytes: int) -> None:
        """Half-close, then read and drop what the peer still sends (undecrypted) until it
        closes or `max_bytes` came; the caller bounds the time. Closing a socket with unread
        bytes makes the kernel send a reset, and a client still sending its body would see
        that instead of the error response already written."""
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()
        received = 0
        while received < max_bytes:
            data = await self._receive_raw(wait_first=True)
            if not data:
                return
            received += len(data)

    async def _fill(self, *, wait_first: bool = False) -> bool:
        data = await self._receive_raw(wait_first=wait_first)
        if not data:
            return False
        self._incoming.write(data)
        return True

    async def _receive_raw(self, *, wait_first: bool) -> bytes | bytearray:
        """Encrypted bytes from the transport; b"" when the peer closed."""
        if self._fd < 0:
            return await self.transport.receive_some(_READ_SIZE)
        return await self._read_socket(wait_first=wait_first)

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if not data:
            return
        if self._fd < 0:
            await self.transport.send_all(data)
        else:
            await self._write_socket(data)

    async def _read_socket(self, *, wait_first: bool = False) -> bytes:
        waited = wait_first
        if wait_first:
            await trio.lowlevel.wait_readable(self._fd)
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket error: {exc}") from exc
            if not waited:
                # Data was already there (a pipelining peer): still let others run.
                await trio.lowlevel.checkpoint()
            return data

    async def _write_socket(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket error: {exc}") from exc
            view = view[sent:]

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
