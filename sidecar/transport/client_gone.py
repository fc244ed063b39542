"""The one "the client is gone" error of both http directions (inbound and outbound)."""

from __future__ import annotations

from meshgate.errors import TransportError

__all__ = ["ClientGoneError"]


class ClientGoneError(TransportError):
    """Nothing more can be sent to the client: it reset or closed its connection, or did not
    read our response (or send its body) in time. Its text is a short code for the access
    record's reason: ``client_gone``, ``client_stalled``, ``client_idle``,
    ``client_closed_in_body``, ``body_idle`` / ``body_slow`` (after the response head)."""
