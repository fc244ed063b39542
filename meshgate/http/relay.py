"""How a proxied response head is rebuilt for the client: one rule for both sidecars. Pure.

Both directions relay a response they read with `ResponseReader` to a client whose request
they read with `RequestReader`; this module decides what goes on the wire, so the inbound
and the outbound cannot drift apart again:

- 1xx: hop-by-hop headers (and those named in its Connection) removed, like any head; an
  HTTP/1.0 client gets none (it does not know 1xx).
- HEAD: no body, but the upstream's Content-Length is kept when it is one plain number
  (clients use it to learn the size).
- framing: a body delimited by close is chunked for an HTTP/1.1 client (so its connection
  lives on); a chunked body goes to an HTTP/1.0 client delimited by close.
- keep-alive: as the caller allows and the framing permits; `connection: close` when not,
  `connection: keep-alive` to an HTTP/1.0 client that stays (1.0 closes by default).
"""

from __future__ import annotations

from typing import Final, final

from meshgate.http.events import NO_BODY, BodyKind, Framing, InterimResponse, ResponseHead
from meshgate.http.forwarding import forward_response_headers
from meshgate.http.serialize import serialize_response_head

__all__ = ["RelayedHead", "head_length", "relay_interim", "relay_response_head"]

_CHUNKED: Final = Framing(BodyKind.CHUNKED)
_UNTIL_CLOSE: Final = Framing(BodyKind.UNTIL_CLOSE)
_CLOSE: Final = (("connection", "close"),)
_KEEP_ALIVE: Final = (("connection", "keep-alive"),)


@final
class RelayedHead:
    """The head to send, how to write the body after it (CHUNKED: encode each piece as a
    chunk, end with `LAST_CHUNK`), and whether the client connection goes on. A plain
    slotted class: a frozen dataclass costs ~0.5 µs more per response on the hot path."""

    __slots__ = ("framing", "keep_client", "wire")

    def __init__(self, wire: bytes, framing: Framing, keep_client: bool) -> None:
        self.wire = wire
        self.framing = framing
        self.keep_client = keep_client


def relay_interim(interim: InterimResponse, client_version: str) -> bytes | None:
    """The 1xx head to send on, or None for an HTTP/1.0 client."""
    if client_version != "1.1":
        return None
    headers = forward_response_headers(interim.headers)
    return serialize_response_head(interim.status, interim.reason, headers, NO_BODY)


def head_length(resp: ResponseHead) -> Framing:
    """A response to HEAD has no body, but keeps the upstream's Content-Length when it is
    one plain number."""
    lengths = [value for name, value in resp.headers if name == "content-length"]
    if len(lengths) == 1 and lengths[0].isdigit() and len(lengths[0]) <= 18:
        return Framing(BodyKind.LENGTH, int(lengths[0]))
    return NO_BODY


def relay_response_head(
    resp: ResponseHead, *, method: str, client_version: str, keep_client: bool
) -> RelayedHead:
    """The final head for the client. `keep_client`: the request asked to keep the
    connection and nothing on the caller's side (an unread upload, a retiring connection)
    stops it; the framing may still force a close."""
    framing = resp.framing
    client_11 = client_version == "1.1"
    if framing.kind is BodyKind.UNTIL_CLOSE and client_11:
        framing = _CHUNKED
    elif framing.kind is BodyKind.CHUNKED and not client_11:
        framing = _UNTIL_CLOSE
    keep = keep_client and framing.kind is not BodyKind.UNTIL_CLOSE
    headers = forward_response_headers(resp.headers)
    if not keep:
        headers += _CLOSE
    elif not client_11:
        headers += _KEEP_ALIVE
    head_framing = head_length(resp) if method == "HEAD" else framing
    wire = serialize_response_head(resp.status, resp.reason, headers, head_framing)
    return RelayedHead(wire, framing, keep)
