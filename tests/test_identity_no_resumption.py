"""Session resumption gets a full handshake; with a since-expired certificate it is refused.

Resumption would skip certificate checks, so the sidecar's server contexts issue no session
tickets. Driven with `ssl.SSLObject` over memory BIOs (trio's `SSLStream` cannot offer a
saved session), on the real clock: OpenSSL checks expiry against real time.
"""

from __future__ import annotations

import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.identity.credentials import Credentials, CredentialStore
from tests.pki import TestPki as Pki


def _pump(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A complete handshake plus one server→client record (which carries any ticket)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "handshake did not finish"
    server.write(b"hello")
    c_in.write(s_out.read())
    assert client.read(5) == b"hello"
    return client, server


def _pair(pki: Pki, not_after: datetime | None = None) -> tuple[Credentials, Credentials]:
    now = datetime.now(UTC)
    server_leaf = pki.leaf(pki.spiffe_id("shop", "db"))
    client_leaf = pki.raw_leaf(
        [str(pki.spiffe_id("shop", "web"))],
        not_before=now - timedelta(minutes=1),
        not_after=not_after or now + timedelta(hours=1),
    )
    server = Credentials.build(
        (server_leaf.cert, *server_leaf.chain), server_leaf.key, pki.bundles, now
    )
    client = Credentials.build(
        (client_leaf.cert, *client_leaf.chain), client_leaf.key, pki.bundles, now
    )
    return client, server


def test_server_contexts_issue_no_session_tickets() -> None:
    client, server = _pair(Pki())
    assert server.server_context.num_tickets == 0
    for context in (server.server_context, server.client_context, client.client_context):
        assert context.options & ssl.OP_NO_TICKET
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_a_resumption_attempt_gets_a_full_handshake() -> None:
    client, server = _pair(Pki())
    first, _ = _pump(client.client_context, server.server_context)
    again, server_side = _pump(client.client_context, server.server_context, first.session)
    assert not again.session_reused
    assert not server_side.session_reused


def test_the_resumption_check_does_detect_a_resumed_session(tmp_path: Path) -> None:
    """Control: against a server that does issue tickets, the same attempt is resumed."""
    pki = Pki()
    client, _ = _pair(pki)
    leaf = pki.leaf(pki.spiffe_id("shop", "db"))
    cert_path, key_path = leaf.write(tmp_path)
    ticketing = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ticketing.minimum_version = ssl.TLSVersion.TLSv1_3
    ticketing.verify_mode = ssl.CERT_REQUIRED
    ticketing.load_verify_locations(cadata=pki.bundle_pem().decode())
    ticketing.load_cert_chain(cert_path, key_path)
    first, _ = _pump(client.client_context, ticketing)
    # The client context also sets OP_NO_TICKET, which only stops it asking in TLS 1.2;
    # a TLS 1.3 server sends tickets regardless and the client may offer them.
    again, _ = _pump(client.client_context, ticketing, first.session)
    assert again.session_reused


def test_a_resumption_attempt_with_a_since_expired_certificate_is_refused() -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    client, server = _pair(Pki(), not_after=expires)
    first, _ = _pump(client.client_context, server.server_context)
    store = CredentialStore()
    store.publish(client)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.1)
    assert store.usable(datetime.now(UTC)) is None  # the sidecar itself would not even try
    with pytest.raises(ssl.SSLError, match="expired"):
        _pump(client.client_context, server.server_context, first.session)
