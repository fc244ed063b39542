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

Over a `LeanSocketStream` (the HTTP data path) this stream is lean too, and one layer: it
owns the socket and reads and writes it itself (`recv_now`, `send_now`), so a call pays one
busy guard, one cancellation check and one fairness count, not one in each layer, and uses
the lean stream's waits (its deadlines, quick ACKs) only when it has to wait. A call yields
to the scheduler only then (or every `checkpoint_every`-th call); a flush the kernel takes
whole needs no send lock (nothing yields in between), only one that waits takes it. Over
any other transport every call is a checkpoint, as trio's streams are.

A receive with nothing for OpenSSL to read goes to the transport first instead of an
SSL_read that can only raise SSLWantReadError, and when the last receive emptied the socket
it waits for readability first instead of a `recv` that can only fail with EAGAIN (the peer
is usually still writing its next message). Not once OpenSSL has read the peer's
close_notify: a read ahead may have taken it with the last bytes, and SSL_read answers the
end from its state while the peer may send nothing more.

A receive returns every complete record already buffered (up to `max_bytes`), not one
record per call, so a response sent as a head record and a body record is read in one call.

Why one module: the stream's receive, send, flush and close share one OpenSSL object, its
two BIOs and the send lock; the lean one-layer path and the general one are the same calls.
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
        self._close_notify_read = False  # OpenSSL read the peer's close_notify
        self._plain = bytearray()  # decrypted, not yet returned by receive_some
        self._closed = False
        self._broken = False
        self._read_error: ssl.SSLError | None = None  # met while reading ahead: raised next
        # Lean when the transport is (a transport that yields on every call keeps this
        # stream to trio's contract too: every call a checkpoint). Then this stream owns the
        # socket and reads and writes it itself: one guard, one cancellation check and one
        # fairness count per call, not one in each layer; the lean stream's waits (its
        # deadlines, quick ACKs) are used only when a call has to wait.
        self._sock: LeanSocketStream | None = None
        if isinstance(transport, LeanSocketStream) and transport.checkpoint_every > 1:
            self._sock = transport
        self._lean = self._sock is not None
        # The last receive from the socket emptied it: with nothing left for OpenSSL either,
        # the next one waits for readability first instead of an SSLWantReadError and an
        # EAGAIN (the peer is usually still writing its next message).
        self._drained = True

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

    async def _flush(self) -> None:
        if not self._outgoing.pending:
            return  # never queue behind a blocked sender when there is nothing to send
        lock = self._send_lock
        sock = self._sock
        if sock is not None and not lock.locked():
            # Nobody is mid-send and nothing here yields until the kernel refuses bytes, so
            # the BIO's bytes go out whole and in order without the lock; it is taken only
            # to wait for the rest.
            data = self._outgoing.read()
            try:
                sent = sock.send_now(data)
            except BaseException:
                self._broken = True
                raise
            if sent == len(data):
                return
            lock.acquire_nowait()
            try:
                await self._send_rest(sock, memoryview(data)[sent:])
            finally:
                lock.release()
            return
        # Drain the BIO while holding the lock: whoever holds it sends everything made
        # so far, in order, and nothing is lost if a waiter is cancelled.
        await lock.acquire()
        try:
            data = self._outgoing.read()
            if not data:
                return
            if sock is not None:
                await self._send_rest(sock, memoryview(data))
                return
            try:
                await self.transport.send_all(data)
            except BaseException:
                self._broken = True  # an unknown part was sent: the record stream is torn
                raise
        finally:
            lock.release()

    async def _send_rest(self, sock: LeanSocketStream, view: memoryview) -> None:
        """Wait for the socket and send `view` (under the send lock)."""
        try:
            while view:
                await sock.wait_writable()
                view = view[sock.send_now(view) :]
        except BaseException:
            self._broken = True  # an unknown part was sent: the record stream is torn
            raise

    async def _fill(self, sock: LeanSocketStream) -> None:
        """Records from the socket into the BIO (`_pull` for a socket this stream owns):
        waits first when the last receive emptied the socket."""
        if self._drained:
            await sock.wait_readable()
        while (data := sock.recv_now(_DEFAULT_RECEIVE)) is None:
            await sock.wait_readable()
        if data:
            self._incoming.write(data)
            self._drained = len(data) < _DEFAULT_RECEIVE
        else:
            self._transport_eof = True

    async def _pull(self) -> None:
        """More records from the transport. Its EOF reaches the BIO only once OpenSSL has
        consumed every byte before it (see `_send_close_notify`)."""
        if self._transport_eof:
            self._incoming.write_eof()  # the next SSL call fails with EOF: truncation
            return
        if self._sock is not None:
            await self._fill(self._sock)
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
            if self._lean:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()
            if self._closed or self._broken:
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
            if self._outgoing.pending:
                await self._flush()
            if self._sock is not None and self._sock.count_call():
                await trio.lowlevel.cancel_shielded_checkpoint()

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
            if self._lean:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()
            limit = max_bytes or _DEFAULT_RECEIVE
            if self._plain:
                self._check_open()
                buffered = bytes(self._plain[:limit])
                del self._plain[:limit]
                return buffered
            sock = self._sock
            while True:
                if self._closed or self._broken:
                    self._check_open()
                if (
                    self._handshook
                    and not self._incoming.pending
                    and not self._transport_eof
                    and not self._close_notify_read
                    and self._read_error is None
                    and not self._ssl.pending()
                ):
                    # Nothing for OpenSSL to read: SSL_read could only raise WantRead, so
                    # go to the transport first. Not once close_notify was read (by a read
                    # ahead too): SSL_read answers that from its state, with nothing new
                    # to read, and the peer may send nothing more (a half-close).
                    if sock is not None:
                        await self._fill(sock)
                    else:
                        await self._pull()
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
                if data == b"":
                    self._close_notify_read = True  # raised, or b"" (only the peer closed)
                elif data and self._incoming.pending and len(data) < limit:
                    data = self._read_ahead(data, limit)
                if self._outgoing.pending > queued:
                    # The read made a reply (KeyUpdate). Never flush otherwise: a receiver
                    # stuck sending a sender's bytes deadlocks two relays reading each other.
                    await self._flush()
                if data is not None:
                    if len(data) > limit:
                        self._plain += data[limit:]
                        data = data[:limit]
                    if sock is not None and sock.count_call():
                        await trio.lowlevel.cancel_shielded_checkpoint()
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
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._close_notify_read = True
                break
            except ssl.SSLError as exc:
                self._read_error = exc
                break
            if not more:  # close_notify (Python returns b"" when only the peer closed)
                self._close_notify_read = True
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
