"""HEAD, HTTP/1.0 clients, 1xx, 204 and 304 pass through a real sidecar pair
(client → A's outbound → mTLS → B's inbound → app) as the app sent them, framed right, and
the client connection stays usable when it should.

The client side is a raw socket so the test sees the exact bytes the outbound sidecar
wrote. The app is a raw keep-alive HTTP/1.1 server whose answers depend on the path.
Before the shared response relay (`meshgate/http/relay.py`) the outbound sidecar dropped
`Content-Length` on HEAD responses and closed every HTTP/1.0 connection.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.http_mesh import POLICIES, HttpPair, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds any single read may wait; never reached when things work
EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\n"
    b"link: </style.css>; rel=preload\r\n"
    b"connection: x-hop\r\n"
    b"x-hop: must-not-cross\r\n"
    b"keep-alive: timeout=5\r\n"
    b"\r\n"
)


def _length_response(body: bytes, *extra: bytes) -> bytes:
    return b"".join(
        [b"HTTP/1.1 200 OK\r\n", *extra, b"content-length: %d\r\n\r\n" % len(body), body]
    )


class _AppHandler(socketserver.StreamRequestHandler):
    """Keep-alive HTTP/1.1: the answer depends on the path (see each branch)."""

    def handle(self) -> None:
        while line := self.rfile.readline():
            method, path, _ = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            send = self.connection.sendall
            length = int(headers.get("content-length", "0"))
            if path == "/refuse":  # a final answer instead of the 100; the body stays unread
                send(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n")
                return
            if path == "/continue":
                if headers.get("expect", "").lower() == "100-continue":
                    send(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = self.rfile.read(length)
                send(_length_response(b"got " + body))
                continue
            self.rfile.read(length)
            if path == "/hints":
                send(EARLY_HINTS)
                send(_length_response(b"hinted"))
            elif path == "/204":
                send(b"HTTP/1.1 204 No Content\r\nx-app: 204\r\n\r\n")
            elif path == "/304":
                send(b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n')
            elif path == "/chunked":
                send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                send(b"5\r\nhello\r\n0\r\n\r\n")
            elif method == "HEAD":
                send(b"HTTP/1.1 200 OK\r\nx-app: head\r\ncontent-length: 5\r\n\r\n")
            else:
                send(_length_response(b"hello", b"x-app: get\r\n"))


class _App(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def _app() -> Iterator[_App]:
    app = _App(("127.0.0.1", 0), _AppHandler)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpPair, Path]]:
    """One pair shared by the tests here (starting sidecars is slow), and its directory."""
    tmp: Path = tmp_path_factory.mktemp("pair")
    # The example set lets shop read the catalog; the 100-continue test needs a POST too.
    shutil.copytree(POLICIES, tmp / "policies")
    (tmp / "policies" / "shop-writes.cedar").write_text(
        '@id("shop-writes-catalog")\n'
        'permit (principal in Namespace::"shop", action, resource == Service::"catalog");\n'
    )
    with _app() as app:
        pair = http_sidecar_pair(Pki(), tmp, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            yield pair, tmp


@pytest.fixture
def outbound_port(mesh: tuple[HttpPair, Path]) -> int:
    return mesh[0].a_outbound


@dataclass
class _Response:
    status_line: bytes
    headers: list[tuple[str, str]]  # lowercase names, in wire order
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class _Client:
    """A raw socket to the outbound sidecar that reads responses byte-exactly."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        if tls is not None:  # straight to B's inbound, as A's sidecar would come
            self.sock = tls.wrap_socket(self.sock)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buf += data
        return data

    def head(self) -> _Response:
        """The next response head (1xx included), its body left unread."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise AssertionError(f"connection closed before a head; got {self.buf!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = raw.split(b"\r\n")
        headers = []
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.lower(), value.strip()))
        return _Response(status_line, headers, b"")

    def response(self, *, head_request: bool = False) -> _Response:
        """The next final response with its body (skipping 1xx is the caller's job)."""
        resp = self.head()
        lengths = resp.values("content-length")
        if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        if resp.values("transfer-encoding") == ["chunked"]:
            resp.body = self._chunked()
        elif lengths:
            (length,) = lengths
            while len(self.buf) < int(length):
                if not self._more():
                    raise AssertionError("connection closed inside the body")
            resp.body, self.buf = self.buf[: int(length)], self.buf[int(length) :]
        else:
            while self._more():
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                assert self._more(), "connection closed in a chunk line"
            line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(line, 16)
            while len(self.buf) < size + 2:
                assert self._more(), "connection closed in a chunk"
            body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
            if size == 0:
                return body

    def closed_by_peer(self) -> bool:
        """True when the sidecar closes the connection with nothing more to say."""
        try:
            return self.buf == b"" and self._more() == b""
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def still_open(self) -> bool:
        """True when nothing arrives and the connection is not closed (a short, non-timing
        probe: a closed connection reads b"" at once)."""
        self.sock.settimeout(0.3)
        try:
            return self._more() != b""
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(DEADLINE)


@contextmanager
def _client(port: int, tls: ssl.SSLContext | None = None) -> Iterator[_Client]:
    client = _Client(port, tls)
    try:
        yield client
    finally:
        client.close()


def _get(path: str, version: str = "1.1", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/{version}", "host: catalog", *extra, "", ""]
    return "\r\n".join(lines).encode()


def test_head_keeps_the_apps_content_length_and_sends_no_body(outbound_port: int) -> None:
    with _client(outbound_port) as c:
        c.send(b"HEAD /thing HTTP/1.1\r\nhost: catalog\r\n\r\n")
        resp = c.response(head_request=True)
        assert resp.status == 200
        assert resp.values("content-length") == ["5"]
        assert resp.values("x-app") == ["head"]
        # No body bytes: the next response on the connection starts right after the head.
        c.send(_get("/after-head"))
        after = c.response()
        assert after.status_line == b"HTTP/1.1 200 OK"
        assert after.body == b"hello"


def test_an_http10_client_asking_for_keep_alive_is_kept_alive_across_requests(
    outbound_port: int,
) -> None:
    with _client(outbound_port) as c:
        for i in range(3):
            c.send(_get(f"/ten/{i}", "1.0", "connection: keep-alive"))
            resp = c.response()
            assert resp.status == 200
            assert resp.body == b"hello"
            assert resp.values("content-length") == ["5"]
            assert [v.lower() for v in resp.values("connection")] == ["keep-alive"]
        assert c.still_open()


def test_an_http10_client_without_keep_alive_gets_its_answer_then_a_close(
    outbound_port: int,
) -> None:
    with _client(outbound_port) as c:
        c.send(_get("/ten", "1.0"))
        resp = c.response()
        assert resp.status == 200
        assert resp.body == b"hello"
        assert "keep-alive" not in [v.lower() for v in resp.values("connection")]
        assert c.closed_by_peer()


def test_a_chunked_answer_to_an_http10_client_is_sent_until_close(outbound_port: int) -> None:
    with _client(outbound_port) as c:
        c.send(_get("/chunked", "1.0", "connection: keep-alive"))
        resp = c.response()
        assert resp.status == 200
        assert resp.values("transfer-encoding") == []  # HTTP/1.0 knows no chunking
        assert resp.body == b"hello"  # read until the sidecar closed


def test_100_continue_reaches_a_client_that_waits_for_it_before_its_body(
    outbound_port: int,
) -> None:
    with _client(outbound_port) as c:
        c.send(
            b"POST /continue HTTP/1.1\r\nhost: catalog\r\nexpect: 100-continue\r\n"
            b"content-length: 4\r\n\r\n"
        )
        interim = c.head()  # the client sends its body only after this
        assert interim.status_line == b"HTTP/1.1 100 Continue"
        c.send(b"body")
        resp = c.response()
        assert resp.status == 200
        assert resp.body == b"got body"
        c.send(_get("/after-continue"))
        assert c.response().body == b"hello"


def test_a_final_answer_instead_of_100_continue_reaches_the_client_and_closes(
    outbound_port: int,
) -> None:
    with _client(outbound_port) as c:
        c.send(
            b"POST /refuse HTTP/1.1\r\nhost: catalog\r\nexpect: 100-continue\r\n"
            b"content-length: 4\r\n\r\n"
        )
        resp = c.response()
        assert resp.status_line == b"HTTP/1.1 417 Expectation Failed"
        assert resp.values("connection") == ["close"]  # the body it announced was never read
        assert c.closed_by_peer()


def test_103_early_hints_arrive_without_hop_by_hop_headers(outbound_port: int) -> None:
    with _client(outbound_port) as c:
        c.send(_get("/hints"))
        interim = c.head()
        assert interim.status_line == b"HTTP/1.1 103 Early Hints"
        assert interim.values("link") == ["</style.css>; rel=preload"]
        names = {n for n, _ in interim.headers}
        assert not names & {"connection", "x-hop", "keep-alive"}, interim.headers
        resp = c.response()
        assert resp.status == 200
        assert resp.body == b"hinted"


class _RawUpstreamHandler(socketserver.StreamRequestHandler):
    """Stands in for B's inbound sidecar (B's SVID, TLS 1.3) and answers a 103 carrying
    hop-by-hop headers: the inbound sidecar strips them, so only a raw upstream shows
    whether the outbound strips them too."""

    def setup(self) -> None:
        context: ssl.SSLContext = self.server.context  # type: ignore[attr-defined]
        self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        while self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(EARLY_HINTS + _length_response(b"hinted"))
            self.wfile.flush()

    def finish(self) -> None:
        super().finish()
        self.request.close()  # the TLS socket; the server closes only the one it accepted


def test_the_outbound_strips_hop_by_hop_headers_from_a_1xx_it_relays(tmp_path: Path) -> None:
    pki = Pki()
    pair = http_sidecar_pair(pki, tmp_path, 9)  # the app is never reached here
    b_dir = tmp_path / "b"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(b_dir / "svid.pem", b_dir / "svid.key")
    upstream = _App(("127.0.0.1", pair.b_inbound), _RawUpstreamHandler)
    upstream.context = context  # type: ignore[attr-defined]
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        with running_sidecar(pair.a_config, pair.a_admin), _client(pair.a_outbound) as c:
            c.send(_get("/hints"))
            interim = c.head()
            assert interim.status_line == b"HTTP/1.1 103 Early Hints"
            assert interim.values("link") == ["</style.css>; rel=preload"]
            names = {n for n, _ in interim.headers}
            assert not names & {"connection", "x-hop", "keep-alive"}, interim.headers
            assert c.response().body == b"hinted"
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_an_http10_client_gets_no_1xx(outbound_port: int) -> None:
    with _client(outbound_port) as c:
        c.send(_get("/hints", "1.0"))
        resp = c.response()
        assert resp.status == 200  # the 103 was not passed to a client that cannot read it
        assert resp.body == b"hinted"


@pytest.mark.parametrize(
    ("path", "status_line"),
    [
        ("/204", b"HTTP/1.1 204 No Content"),
        ("/304", b"HTTP/1.1 304 Not Modified"),
    ],
)
def test_204_and_304_carry_no_body_or_framing_and_the_connection_goes_on(
    outbound_port: int, path: str, status_line: bytes
) -> None:
    with _client(outbound_port) as c:
        for _ in range(2):
            c.send(_get(path))
            resp = c.response()
            assert resp.status_line == status_line
            assert resp.values("transfer-encoding") == []
            assert resp.values("content-length") == []
            assert resp.values("connection") == []
        # Nothing stray followed the bodiless answers: the next response parses cleanly.
        c.send(_get("/after"))
        after = c.response()
        assert after.status_line == b"HTTP/1.1 200 OK"
        assert after.body == b"hello"
        assert c.buf == b""


def _as_sidecar_a(directory: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context with A's SVID, trusting the mesh bundle."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # SPIFFE: the SVID names no host
    context.load_verify_locations(directory / "bundle.pem")
    context.load_cert_chain(directory / "svid.pem", directory / "svid.key")
    return context


def test_the_inbound_keeps_an_http10_client_alive_and_head_lengths_and_strips_1xx(
    mesh: tuple[HttpPair, Path],
) -> None:
    """The other direction alone: an HTTP/1.0 mesh client straight to B's inbound (the
    outbound always speaks HTTP/1.1 upstream, so the pair never shows this)."""
    pair, tmp = mesh
    with _client(pair.b_inbound, _as_sidecar_a(tmp / "a")) as c:
        c.send(b"HEAD /thing HTTP/1.0\r\nhost: catalog\r\nconnection: keep-alive\r\n\r\n")
        head = c.response(head_request=True)
        assert head.status == 200
        assert head.values("content-length") == ["5"]
        assert head.values("connection") == ["keep-alive"]
        for i in range(2):
            c.send(_get(f"/ten/{i}", "1.0", "connection: keep-alive"))
            resp = c.response()
            assert resp.body == b"hello"
            assert resp.values("connection") == ["keep-alive"]
        c.send(_get("/hints", "1.0"))  # no keep-alive asked: the answer, no 103, then a close
        resp = c.response()
        assert resp.status == 200
        assert resp.body == b"hinted"
        assert resp.values("connection") == ["close"]
        assert c.closed_by_peer()
    with _client(pair.b_inbound, _as_sidecar_a(tmp / "a")) as c:
        c.send(_get("/hints"))
        interim = c.head()
        assert interim.status_line == b"HTTP/1.1 103 Early Hints"
        assert not {n for n, _ in interim.headers} & {"connection", "x-hop", "keep-alive"}
        assert c.response().body == b"hinted"
