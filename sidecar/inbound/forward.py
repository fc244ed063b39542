"""The forward and relay stages of the inbound http session: one decided request to the app
and its response back to the client, both re-framed by us.

`Forwarder.forward` takes an app connection (a kept-alive one from `AppPool`, else a new
one within ``connect_timeout_seconds``), sends the rebuilt head, moves the body with the
shared pump (`sidecar.transport.body_pump`) beside the response relay when there is a body,
and relays the response with the shared relay (`sidecar.transport.response_pump`: 1xx, HEAD,
HTTP/1.0 keep-alive, re-framing, the head and the body read so far in one write) — the same
code the outbound sidecar uses both ways. The app must send its final head within
``response_timeout_seconds`` (restarted by every body piece sent), may pause its body for
``body_idle_timeout_seconds``; a stale kept-alive connection is retried once on a fresh one.
Here the relay's result becomes the app's answer: 502 or 504 with a short text before the
head, ``response_incomplete`` and an abort after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio

from meshgate.errors import StaleConnectionError
from meshgate.http import (
    BodyKind,
    Framing,
    HttpError,
    NormalizedTarget,
    RequestHead,
    serialize_request_head,
)
from meshgate.http.forwarding import ForwardedRequest
from meshgate.http.replies import reply
from sidecar.inbound.app_pool import AppConnection
from sidecar.inbound.client import ClientSide
from sidecar.inbound.outcome import Live, Outcome, Response, Upload, body_free
from sidecar.observe.logs import event
from sidecar.transport.body_pump import BodyTimeoutError, pump_body
from sidecar.transport.client_gone import ClientGoneError
from sidecar.transport.response_pump import Failure, Relayed, relay_response

if TYPE_CHECKING:
    from sidecar.inbound.http import HttpInbound

__all__ = ["Forwarder"]

log = logging.getLogger("sidecar.inbound.http")


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
        relayed: Relayed | None = None  # None: not sent, or the upload's failure cut it
        reuse = False
        try:
            app.reader.expect(head.method)
            try:
                await app.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if app.reused and no_body:
                    raise StaleConnectionError from exc
            else:
                if no_body:  # the common case: no upload task, no nursery
                    relayed = await self._relay(app, head, upload, response)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(
                            self._pump_body, app, head.framing, upload, response, nursery
                        )
                        relayed = await self._relay(app, head, upload, response)
                        nursery.cancel_scope.cancel()  # an early answer ends the upload
            outcome = Outcome(
                status=response.status,
                bytes_in=upload.bytes_in,
                bytes_out=response.bytes_out,
            )
            if upload.client_gone or (
                relayed is not None and relayed.failure is Failure.CLIENT_GONE
            ):
                outcome.abort_client = True
                outcome.reason = "client_gone"
                return outcome
            if upload.client_error is not None:
                return await self._client_body_error(upload.client_error, response, outcome, head)
            if relayed is None:  # the head never reached the app
                error_status, error, started = 502, "the local app closed the connection", False
            elif relayed.failure is not None:
                if not relayed.received and app.reused and no_body:
                    raise StaleConnectionError
                error_status, error = self._app_failure(relayed)
                started = relayed.started
            else:
                outcome.keep_client = relayed.keep_client and upload.done
                reuse = (
                    relayed.complete
                    and relayed.keep_upstream
                    and upload.done
                    and not upload.app_send_failed
                )
                return outcome
            outcome.reason = ("app_timeout" if error_status == 504 else "app_error") + f": {error}"
            if started:
                outcome.abort_client = True  # the response is cut short: say so by RST
                outcome.reason = f"response_incomplete: {outcome.reason}"
                return outcome
            outcome.status = error_status
            keep = head.keep_alive and upload.done
            return await self._answer_error(outcome, error_status, error, head, request_id, keep)
        finally:
            if not (reuse and pool.keep(app)):
                with trio.CancelScope(shield=True):
                    await pool.discard(app)

    def _app_failure(self, relayed: Relayed) -> tuple[int, str]:
        """The status and text for an app that failed the response relay."""
        failure = relayed.failure
        if failure is Failure.STALLED:
            if relayed.started:
                idle = self.timeouts.body_idle_timeout_seconds
                return 504, f"the local app's response body stalled for {idle:g} s"
            wait = self.timeouts.response_timeout_seconds
            return 504, f"the local app did not answer within {wait:g} s"
        if failure is Failure.INVALID:
            what = "response body" if relayed.started else "response"
            return 502, f"the local app sent an invalid {what} ({relayed.detail})"
        if failure is Failure.RESET:
            return 502, "the local app reset the connection"
        return 502, "the local app closed the connection without a response"

    async def _client_body_error(
        self, error: HttpError, response: Response, outcome: Outcome, head: RequestHead
    ) -> Outcome:
        outcome.reason = f"bad_request: {error.reason}"
        if response.status is not None:
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
                answered=lambda: response.status is not None,
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
        except ClientGoneError:
            upload.client_gone = True
            nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            upload.app_send_failed = True  # the app may still answer (e.g. 413): keep reading

    async def _relay(
        self, app: AppConnection, head: RequestHead, upload: Upload, response: Response
    ) -> Relayed:
        """App response → client by the shared relay. The client connection may go on when
        the request asked for it, the upload ended (an app that answers before the upload
        ended leaves the rest unread) and this connection is not retiring."""
        client, timeouts = self.client, self.timeouts
        return await relay_response(
            app.reader,
            app.stream,
            app.stream,
            client.stream,
            client.transport,
            response,
            method=head.method,
            client_version=head.version,
            keep_client=lambda: head.keep_alive and upload.done and not self.retiring(),
            response_seconds=timeouts.response_timeout_seconds,
            idle_seconds=timeouts.body_idle_timeout_seconds,
        )
