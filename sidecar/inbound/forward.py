"""The forward and relay stages of the inbound http session: one decided request to the app
and its response back to the client, both re-framed by us.

`Forwarder.forward` takes an app connection (a kept-alive one from `AppPool`, else a new
one within ``connect_timeout_seconds``), sends the rebuilt head, moves the body with the
shared pump (`sidecar.transport.body_pump`, the same code the outbound sidecar uses) beside
the response relay when there is a body, and relays the response: 1xx, HEAD, HTTP/1.0
keep-alive and framing by the shared rule (`meshgate.http.relay`). The head goes out with
whatever of the body is already read, in one write. The app must start answering within
``response_timeout_seconds`` (restarted by every body piece sent), may pause its body for
``body_idle_timeout_seconds``; a stale kept-alive connection is retried once on a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import trio

from meshgate.errors import StaleConnectionError
from meshgate.http import (
    CONNECTION_CLOSED,
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    HttpError,
    InterimResponse,
    NormalizedTarget,
    RequestHead,
    ResponseHead,
    encode_chunk,
    serialize_request_head,
)
from meshgate.http.forwarding import ForwardedRequest
from meshgate.http.relay import relay_interim, relay_response_head
from meshgate.http.replies import reply
from sidecar.inbound.app_pool import AppConnection
from sidecar.inbound.client import ClientGoneError, ClientSide
from sidecar.inbound.outcome import Live, Outcome, Response, Upload, body_free
from sidecar.observe.logs import event
from sidecar.transport.body_pump import BodyTimeoutError, SourceGoneError, pump_body

if TYPE_CHECKING:
    from sidecar.inbound.http import HttpInbound

__all__ = ["Forwarder"]

log = logging.getLogger("sidecar.inbound.http")
_READ: Final = 64 * 1024


@final
class Forwarder:
    """Forwards the decided requests of one client connection to the app."""

    __slots__ = ("client", "inbound", "retiring", "timeouts")

    def __init__(
        self, inbound: HttpInbound, client: ClientSide, retiring: Callable[[], bool]
    ) -> None:
        self.inbound = inbound
        self.client = client
        self.timeouts = inbound.runtime.timeouts
        self.retiring = retiring  # near the connection's end: say `connection: close`

    async def forward(
        self,
        head: RequestHead,
        target: NormalizedTarget,
        forwarded: ForwardedRequest,
        live: Live,
    ) -> Outcome:
        data = serialize_request_head(
            head.method, target.target, forwarded.headers, head.framing, head.version
        )
        for attempt in range(2):
            app = await self._acquire(fresh=attempt > 0)
            if isinstance(app, Outcome):
                return await self._app_refusal(app, head, forwarded.request_id)
            try:
                return await self._exchange(app, head, data, forwarded.request_id, live)
            except StaleConnectionError:
                continue
        return await self._app_refusal(
            Outcome(status=502, reason="app_error: app closed the connection"),
            head,
            forwarded.request_id,
        )

    async def _acquire(self, *, fresh: bool) -> AppConnection | Outcome:
        if not fresh and (idle := self.inbound.pool.take_idle()) is not None:
            return idle  # no connect: no timeout scope either
        timeout = self.timeouts.connect_timeout_seconds
        with trio.move_on_after(timeout):
            try:
                return await self.inbound.pool.acquire(fresh=fresh)
            except OSError as exc:
                event(
                    log,
                    "app unreachable",
                    level=logging.ERROR,
                    app=str(self.inbound.config.app),
                    error=str(exc),
                )
                return Outcome(status=502, reason="app_unreachable")
        return Outcome(status=504, reason="app_connect_timeout")

    async def _app_refusal(self, outcome: Outcome, head: RequestHead, request_id: str) -> Outcome:
        """Answer for an app we could not reach; the request body was never read, so the
        connection closes unless the request had none."""
        assert outcome.status is not None
        keep = head.keep_alive and body_free(head.framing)
        message = {
            "app_unreachable": "the local app refused the connection",
            "app_connect_timeout": "the local app did not accept a connection in time",
        }.get(outcome.reason or "", "the local app closed the connection")
        return await self._answer_error(outcome, outcome.status, message, head, request_id, keep)

    async def _answer_error(
        self,
        outcome: Outcome,
        status: int,
        message: str,
        head: RequestHead,
        request_id: str,
        keep: bool,
    ) -> Outcome:
        """Send the client our own error reply for `head`; `outcome` records whether the
        connection stays open (`keep`) or the client is gone."""
        try:
            await self.client.send(
                reply(
                    status,
                    message,
                    request_id,
                    close=not keep,
                    head_only=head.method == "HEAD",
                    version=head.version,
                )
            )
            outcome.keep_client = keep
        except ClientGoneError:
            outcome.abort_client = True
        return outcome

    async def _exchange(
        self, app: AppConnection, head: RequestHead, data: bytes, request_id: str, live: Live
    ) -> Outcome:
        """Send one request on `app`, stream the body and the response; release or discard
        `app` afterwards. Raises `StaleConnectionError` only before anything was read from the
        client's body and before any response byte."""
        pool = self.inbound.pool
        no_body = body_free(head.framing)
        upload, response = Upload(done=no_body), Response()
        live.upload, live.response = upload, response
        reuse = False
        try:
            app.reader.expect(head.method)
            try:
                await app.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if app.reused and no_body:
                    raise StaleConnectionError from exc
                response.fail(502, "the local app closed the connection")
            else:
                app.stream.receive_deadline = (
                    trio.current_time() + self.timeouts.response_timeout_seconds
                )
                if no_body:  # the common case: no upload task, no nursery
                    await self._relay_response(app, head, upload, response)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(
                            self._pump_body, app, head.framing, upload, response, nursery
                        )
                        await self._relay_response(app, head, upload, response)
                        nursery.cancel_scope.cancel()  # an early answer ends the upload
            outcome = Outcome(
                status=response.status,
                bytes_in=upload.bytes_in,
                bytes_out=response.bytes_out,
            )
            if upload.client_gone or response.client_gone:
                outcome.abort_client = True
                outcome.reason = "client_gone"
                return outcome
            if upload.client_error is not None:
                return await self._client_body_error(upload.client_error, response, outcome, head)
            if response.error is not None:
                assert response.error_status is not None
                if not response.received and app.reused and no_body:
                    raise StaleConnectionError
                outcome.reason = (
                    "app_timeout" if response.error_status == 504 else "app_error"
                ) + f": {response.error}"
                if response.started:
                    outcome.abort_client = True  # the response is cut short: say so by RST
                    outcome.reason = f"response_incomplete: {outcome.reason}"
                    return outcome
                outcome.status = response.error_status
                keep = head.keep_alive and upload.done
                return await self._answer_error(
                    outcome, response.error_status, response.error, head, request_id, keep
                )
            outcome.keep_client = response.keep_client and upload.done
            reuse = (
                response.complete
                and response.app_keep_alive
                and upload.done
                and not upload.app_send_failed
            )
            return outcome
        finally:
            if not (reuse and pool.keep(app)):
                with trio.CancelScope(shield=True):
                    await pool.discard(app)

    async def _client_body_error(
        self, error: HttpError, response: Response, outcome: Outcome, head: RequestHead
    ) -> Outcome:
        outcome.reason = f"bad_request: {error.reason}"
        if response.started:
            outcome.abort_client = True
            return outcome
        outcome.status = error.status_hint
        try:
            await self.client.send(
                reply(error.status_hint, error.reason, self.inbound.new_request_id(), close=True)
            )
        except ClientGoneError:
            outcome.abort_client = True
        return outcome

    async def _pump_body(
        self,
        app: AppConnection,
        framing: Framing,
        upload: Upload,
        response: Response,
        nursery: trio.Nursery,
    ) -> None:
        """Client body → app, re-framed by us. A client fault ends the whole exchange.
        Until the response starts, every byte sent restarts the app's response timeout."""
        timeouts = self.timeouts
        client = self.client
        try:
            await pump_body(
                client.reader,
                client.stream,
                client.transport,
                app.stream,
                upload,
                chunked=framing.kind is BodyKind.CHUNKED,
                idle_seconds=timeouts.body_idle_timeout_seconds,
                pace=self.inbound.body_pace,
                answer_clock=app.stream,
                answer_seconds=timeouts.response_timeout_seconds,
                answered=lambda: response.started,
            )
            upload.done = True
        except HttpError as exc:
            upload.client_error = exc
            nursery.cancel_scope.cancel()
        except BodyTimeoutError as exc:
            slow = exc.kind == "slow"
            self.inbound.runtime.observer.body_timeout("inbound", exc.kind)
            upload.client_error = HttpError(
                408, "request body too slow" if slow else "request body idle for too long"
            )
            nursery.cancel_scope.cancel()
        except SourceGoneError:
            upload.client_gone = True
            nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            upload.app_send_failed = True  # the app may still answer (e.g. 413): keep reading

    async def _read_app(self, app: AppConnection, response: Response) -> bool:
        try:
            data = await app.stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            response.fail(502, "the local app reset the connection")
            return False
        if data:
            response.received = True
            app.reader.feed(bytes(data))
        else:
            app.reader.feed_eof()
        return True

    async def _relay_response(
        self,
        app: AppConnection,
        head: RequestHead,
        upload: Upload,
        response: Response,
    ) -> None:
        """App response → client, re-framed by us; records failures in `response`."""
        try:
            resp = await self._response_head(app, head, response)
            if resp is None:
                return
            await self._stream_response(app, head, resp, upload, response)
        except ClientGoneError:
            response.client_gone = True

    async def _response_head(
        self, app: AppConnection, head: RequestHead, response: Response
    ) -> ResponseHead | None:
        """The app's final response head by `app.stream.receive_deadline`, else 504."""
        try:
            while True:
                try:
                    ev = app.reader.next_event()
                except HttpError as exc:
                    response.fail(502, f"the local app sent an invalid response ({exc.reason})")
                    return None
                if ev is NEED_DATA:
                    if not await self._read_app(app, response):
                        return None
                elif ev is CONNECTION_CLOSED:
                    response.fail(502, "the local app closed the connection without a response")
                    return None
                elif isinstance(ev, InterimResponse):
                    interim = relay_interim(ev, head.version)
                    if interim is not None:
                        await self.client.send(interim)
                elif isinstance(ev, ResponseHead):
                    return ev
                else:
                    raise AssertionError(f"unexpected {ev!r} before a response head")
        except trio.TooSlowError:
            response.fail(
                504,
                f"the local app did not answer within {self.timeouts.response_timeout_seconds:g} s",
            )
            return None

    async def _stream_response(
        self,
        app: AppConnection,
        head: RequestHead,
        resp: ResponseHead,
        upload: Upload,
        response: Response,
    ) -> None:
        response.status = resp.status
        # Decided now, since it goes into the head: an app that answers before the upload
        # ended leaves the rest of the body unread, so the connection cannot continue.
        relayed = relay_response_head(
            resp,
            method=head.method,
            client_version=head.version,
            keep_client=head.keep_alive and upload.done and not self.retiring(),
        )
        response.keep_client = relayed.keep_client
        # The head goes out with whatever of the body is already here: one write, one TLS
        # record. Pending pieces are flushed before any wait and before a failure is recorded.
        pieces = [relayed.wire]
        response.started = True
        chunked = relayed.framing.kind is BodyKind.CHUNKED
        idle = self.timeouts.body_idle_timeout_seconds
        while True:
            try:
                ev = app.reader.next_event()
            except HttpError as exc:
                await self._send_pieces(pieces)
                response.fail(502, f"the local app sent an invalid response body ({exc.reason})")
                return
            if ev is NEED_DATA:
                if pieces:
                    await self._send_pieces(pieces)
                    pieces = []
                app.stream.receive_deadline = trio.current_time() + idle
                try:
                    if not await self._read_app(app, response):
                        return
                except trio.TooSlowError:
                    response.fail(504, f"the local app's response body stalled for {idle:g} s")
                    return
            elif isinstance(ev, Data):
                response.bytes_out += len(ev.data)
                pieces.append(encode_chunk(ev.data) if chunked else ev.data)
            elif isinstance(ev, EndOfMessage):
                if chunked:
                    pieces.append(LAST_CHUNK)
                await self._send_pieces(pieces)
                response.complete = True
                response.app_keep_alive = resp.keep_alive
                return
            else:
                raise AssertionError(f"unexpected {ev!r} inside a response body")

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        if pieces:
            await self.client.send(pieces[0] if len(pieces) == 1 else b"".join(pieces))
