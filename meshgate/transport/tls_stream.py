"""A TLS stream over any trio stream that can half-close: `send_eof` sends close_notify.

Why not `trio.SSLStream`: it is not a `HalfCloseableStream`, so a relay in front of it
cannot pass on "the client finished sending" without tearing the whole connection down,
which loses the reply of every request-then-shutdown client. TLS 1.3 allows a half-close
(close_notify ends one direction only; RFC 8446 §6.1) and OpenSSL keeps reading after its
own SSL_shutdown, so this stream sends close_notify on `send_eof` and keeps receiving.

The engine is `ssl.SSLObject` over two memory BIOs. Mesh contexts are TLS 1.3 only with no
tickets and no renegotiation, so after the handshake the only traffic a read can cause is
a KeyUpdate reply or an alert; every write to the outgoing BIO is flushed under one FIFO
lock that also drains the BIO, so bytes reach the transport in the order OpenSSL made them.
A transport EOF without close_notify is a truncation: `BrokenResourceError`, never b"".

Over a `LeanSocketStream` (the HTTP data path) this stream is lean too: a call checks for
cancellation but yields to the scheduler only when the transport waits, and takes the send
lock without a trip through the scheduler when nobody holds it. Over any other transport
every call is a checkpoint, as trio's streams are. A receive returns every complete record
already buffered (up to `max_bytes`), not one record per call, so a response sent as a
head record and a body record is read in one call.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import final

import trio

from meshgate.errors import TransportError
from meshgate.transport.one_at_a_time import OneAtATime
from meshgate.transport.socket_stream import LeanSocketStream

__all__ = ["TlsError", "TlsStream", "peer_chain_der"]

_DEFAULT_RECEIVE = 64 * 1024
# aclose does not wait on a peer that never reads: close_notify is polite, not required.
_CLOSE_NOTIFY_GRACE_SECONDS = 0.5


def peer_chain_der(ssl_object: ssl.SSLObject) -> list[bytes]:
    """`TlsStream.peer_chain_der` for any `ssl.SSLObject` (a `trio.SSLStream`'s too)."""
    get = getattr(ssl_object, "get_unverified_chain", None)
    if get is None:
        get = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if get is None:
        return []
    try:
        chain = get() or []
    except (ssl.SSLError, ValueError):
        return []
    return [
        c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        for c in chain
    ]


class TlsError(TransportError):
    """The TLS handshake failed; `__cause__` is the `ssl.SSLError` (verify code, alert)."""


@final
class TlsStream(trio.abc.HalfCloseableStream):
    def __init__(
        self, transport: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._send_lock = trio.StrictFIFOLock()
        self._sending = OneAtATime("another task is sending on this TLS stream")
        self._receiving = OneAtATime("another task is receiving on this TLS stream")
        self._handshook = False
        self._eof_sent = False
        self._transport_eof = False
        self._plain = bytearray()  # decrypted, not yet returned by receive_some
        self._closed = False
        self._broken = False
        self._read_error: ssl.SSLError | None = None  # met while reading ahead: raised next
        # Lean when the transport is (a transport that yields on every call keeps this
        # stream to trio's contract too: every call a checkpoint).
        self._lean = isinstance(transport, LeanSocketStream) and transport.checkpoint_every > 1

    # -- what the handshake established ------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> object:
        return self._ssl.getpeercert(binary_form=binary_form)

    def peer_chain_der(self) -> list[bytes]:
        """The certificates the peer sent (leaf first, DER), as sent: not verified by this.

        Python 3.13 has `SSLObject.get_unverified_chain`; 3.11 has it on the private
        `_sslobj` only. Empty when neither exists or before the handshake."""
        return peer_chain_der(self._ssl)

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("TLS stream is broken")

    async def _checkpoint(self) -> None:
        if self._lean:
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()

    async def _flush(self) -> None:
        if not self._outgoing.pending:
            return  # never queue behind a blocked sender when there is nothing to send
        # Drain the BIO while holding the lock: whoever holds it sends everything made
        # so far, in order, and nothing is lost if a waiter is cancelled.
        lock = self._send_lock
        if self._lean and not lock.locked():
            lock.acquire_nowait()
        else:
            await lock.acquire()
        try:
            data = self._outgoing.read()
            if not data:
                return
            try:
                await self.transport.send_all(data)
            except trio.BrokenResourceError:
                self._broken = True
                raise
            except BaseException:
                self._broken = True  # an unknown part was sent: the record stream is torn
                raise
        finally:
            lock.release()

    async def _pull(self) -> None:
        """More records from the transport. Its EOF reaches the BIO only once OpenSSL has
        consumed every byte before it (see `_send_close_notify`)."""
        if self._transport_eof:
            self._incoming.write_eof()  # the next SSL call fails with EOF: truncation
            return
        data = await self.transport.receive_some(_DEFAULT_RECEIVE)
        if data:
            self._incoming.write(data)
        else:
            self._transport_eof = True

    def _send_close_notify(self) -> None:
        """SSL_shutdown once, queueing close_notify in the outgoing BIO.

        Python's `unwrap` calls SSL_shutdown a second time to read the peer's close_notify,
        and OpenSSL discards (or fails on) application data it meets there after its own
        close_notify. Half-close needs that data, so: decrypted bytes are moved into our
        buffer first, and undecrypted records are taken out of the BIO for the call and
        put back after it.
        """
        while self._ssl.pending():
            self._plain += self._ssl.read(self._ssl.pending())
        stashed = b"" if self._incoming.eof else self._incoming.read()
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the alert is queued; the peer's close_notify is not awaited
        finally:
            if stashed:
                self._incoming.write(stashed)

    # -- the stream ------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake; `TlsError` (cause: the SSL error) if it fails."""
        self._check_open()
        while True:
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._broken = True
                # Best effort: let the peer read our alert (unknown_ca, certificate_required).
                with (
                    trio.move_on_after(_CLOSE_NOTIFY_GRACE_SECONDS),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await self._flush()
                raise TlsError(str(exc)) from exc
            await self._flush()
            if done:
                self._handshook = True
                return
            await self._pull()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await self._checkpoint()
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof was called on this TLS stream")
            if not data:
                return
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS write failed: {exc}") from exc
            await self._flush()

    async def send_eof(self) -> None:
        """Send close_notify: the peer reads EOF; this side can still receive."""
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_open()
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                self._send_close_notify()
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS shutdown failed: {exc}") from exc
            await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_open()
            async with self._send_lock:
                await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an int")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            await self._checkpoint()
            limit = max_bytes or _DEFAULT_RECEIVE
            if self._plain:
                self._check_open()
                buffered = bytes(self._plain[:limit])
                del self._plain[:limit]
                return buffered
            while True:
                self._check_open()
                queued = self._outgoing.pending  # a sender's bytes: that sender flushes them
                try:
                    if self._read_error is not None:
                        raise self._read_error
                    # Read whole records so OpenSSL never holds decrypted bytes (SSL_pending).
                    data: bytes | None = self._ssl.read(_DEFAULT_RECEIVE)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""  # close_notify: a clean end of the peer's direction
                except ssl.SSLError as exc:
                    self._broken = True  # includes a transport EOF without close_notify
                    raise trio.BrokenResourceError(f"TLS read failed: {exc}") from exc
                if data and self._incoming.pending and len(data) < limit:
                    data = self._read_ahead(data, limit)
                if self._outgoing.pending > queued:
                    # The read made a reply (KeyUpdate). Never flush otherwise: a receiver
                    # stuck sending a sender's bytes deadlocks two relays reading each other.
                    await self._flush()
                if data is not None:
                    if len(data) > limit:
                        self._plain += data[limit:]
                        data = data[:limit]
                    return data
                await self._pull()

    def _read_ahead(self, first: bytes, limit: int) -> bytes:
        """`first` plus the plaintext of the further complete records already in the BIO,
        up to about `limit`. A close_notify or an error met here is left for the next call
        (an error is kept and raised then): the bytes before it are returned first."""
        parts = [first]
        size = len(first)
        while size < limit and self._incoming.pending:
            try:
                more = self._ssl.read(_DEFAULT_RECEIVE)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError as exc:
                self._read_error = exc
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Send close_notify (if not sent and nobody is mid-send), then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshook and not self._broken and not self._eof_sent:
                self._eof_sent = True
                try:
                    self._send_close_notify()
                except ssl.SSLError:
                    self._broken = True
                if not self._broken and not self._send_lock.locked():
                    with (
                        trio.move_on_after(_CLOSE_NOTIFY_GRACE_SECONDS),
                        contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError
                        ),
                    ):
                        await self._flush()
        finally:
            await self.transport.aclose()
