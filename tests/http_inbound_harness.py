"""In-memory harness for the http inbound: mTLS client ⇄ HttpInbound ⇄ recording HTTP app.

No sockets: the client and the app are trio memory streams; the TLS is real (TlsStream with
SVIDs from the test PKI); policies are loaded from a temp copy of `policies/` (or a given
text). The app records every request exactly as it received it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio.testing
from cryptography.hazmat.primitives.serialization import Encoding

from meshgate.clock import TrioWallClock
from meshgate.http import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Data,
    EndOfMessage,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)
from meshgate.identity import SpiffeId
from meshgate.transport.mtls import mesh_context
from meshgate.transport.tls_stream import TlsStream
from sidecar.config import InboundConfig, TimeoutsConfig
from sidecar.connections import ConnectionTracker
from sidecar.identity.credentials import CredentialStore
from sidecar.inbound.http import HttpInbound
from sidecar.observe.access import AccessRecord, Observer
from sidecar.observe.tracing import Tracer
from sidecar.policy import PolicyStore, ReloadOutcome
from sidecar.runtime import Runtime
from tests.pki import Leaf
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates, store_for

POLICIES = Path(__file__).resolve().parent.parent / "policies"
NOW = datetime.now(UTC)  # OpenSSL checks validity against the real clock


def copy_policies(target: Path) -> Path:
    shutil.copytree(POLICIES, target)
    return target


def policy_dir_with(target: Path, cedar: str) -> Path:
    """The shipped schema, no entities, and `cedar` as the only policy file."""
    target.mkdir(parents=True)
    shutil.copy(POLICIES / "mesh.cedarschema", target)
    (target / "entities.json").write_text("[]")
    (target / "p.cedar").write_text(cedar)
    return target


@dataclass
class Received:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


@dataclass
class RecordingApp:
    """An HTTP/1.1 keep-alive app over memory streams: answers 200 with the path it got.

    `hold` (an Event) makes it wait before answering, to test timeouts and streaming;
    `body_seen` is set as soon as any body byte has arrived.
    """

    nursery: trio.Nursery
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    refuse: bool = False
    hold: trio.Event | None = None
    body_seen: trio.Event = field(default_factory=trio.Event)
    response_headers: tuple[tuple[str, str], ...] = ()

    async def connect(self) -> trio.abc.Stream:
        if self.refuse:
            raise ConnectionRefusedError("refused")
        self.connections += 1
        sidecar_end, app_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, app_end)
        return sidecar_end

    async def _serve(self, stream: trio.abc.HalfCloseableStream) -> None:
        reader = RequestReader()
        current: Received | None = None
        try:
            while True:
                try:
                    ev = reader.next_event()
                except HttpError:
                    await stream.aclose()
                    return
                if ev is NEED_DATA:
                    data = await stream.receive_some()
                    if data:
                        reader.feed(bytes(data))
                    else:
                        reader.feed_eof()
                elif ev is CONNECTION_CLOSED:
                    await stream.aclose()
                    return
                elif isinstance(ev, RequestHead):
                    current = Received(ev.method, ev.target, ev.version, ev.headers)
                    self.requests.append(current)
                elif isinstance(ev, Data):
                    assert current is not None
                    current.body += ev.data
                    self.body_seen.set()
                elif isinstance(ev, EndOfMessage):
                    assert current is not None
                    if self.hold is not None:
                        await self.hold.wait()
                    body = f"{current.method} {current.target} {len(current.body)}".encode()
                    headers = b"".join(
                        b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in self.response_headers
                    )
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                        + headers
                        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@dataclass
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class AccessLog(logging.Handler):
    """Collects the access records the observer logs."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = getattr(record, "access", None)
        if isinstance(line, dict):
            self.lines.append(line)

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The lines once `count` have been logged (a record follows its response)."""
        with trio.fail_after(5):
            while len(self.lines) < count:
                await trio.sleep(0.001)
        return self.lines


class Harness:
    def __init__(
        self,
        nursery: trio.Nursery,
        policy_dir: Path,
        *,
        audit: bool = False,
        timeouts: TimeoutsConfig | None = None,
        peer: SpiffeId | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.nursery = nursery
        self.pki = Pki(now=NOW)
        self.clock = TrioWallClock(NOW)
        self.peer_id = peer or self.pki.spiffe_id("shop", "web")
        self.own_id = self.pki.spiffe_id("shop", "orders")
        own = self.pki.leaf(self.own_id)
        self.store: CredentialStore = store_for(own, bundle_with_intermediates(self.pki), NOW)
        self.tracker = ConnectionTracker(100, self.store, now=self.clock.now)
        self.policy_dir = policy_dir
        self.policies = PolicyStore()
        assert self.policies.try_reload(policy_dir, NOW) is ReloadOutcome.LOADED
        self.app = RecordingApp(nursery)
        self.observer = Observer(local_id=str(self.own_id))
        config = InboundConfig.model_validate(
            {"listen": "127.0.0.1:1", "app": "127.0.0.1:2", "service": "orders", "protocol": "http"}
        )
        runtime = Runtime(
            self.store,
            self.clock.now,
            timeouts or TimeoutsConfig(),
            self.tracker,
            self.observer,
            tracer=tracer,
        )
        self.inbound = HttpInbound(
            config, runtime, self.policies, audit=audit, connect_app=self.app.connect
        )
        self.peer_leaf: Leaf | None = None

    async def connect(self, leaf: Leaf | None = None) -> TlsStream:
        leaf = leaf or self.pki.leaf(self.peer_id, now=self.clock.now())
        self.peer_leaf = leaf
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.inbound.handle, server_end)
        context = mesh_context("client", leaf.chain_pem(), leaf.key_pem(), self.pki.bundles)
        stream = TlsStream(client_end, context, server_side=False)
        await stream.do_handshake()
        return stream

    def peer_leaf_der(self) -> bytes:
        assert self.peer_leaf is not None
        return self.peer_leaf.cert.public_bytes(Encoding.DER)


async def read_responses(
    stream: trio.abc.Stream, methods: list[str], *, timeout: float = 30
) -> list[Response]:
    """Read one response per method (in order); stops early when the server closes."""
    reader = ResponseReader()
    for method in methods:
        reader.expect(method)
    out: list[Response] = []
    head: ResponseHead | None = None
    body = b""
    with trio.fail_after(timeout):
        while len(out) < len(methods):
            try:
                ev = reader.next_event()
            except HttpError:
                return out
            if ev is NEED_DATA:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                if data:
                    reader.feed(bytes(data))
                else:
                    reader.feed_eof()
            elif ev is CONNECTION_CLOSED:
                return out
            elif isinstance(ev, ResponseHead):
                head, body = ev, b""
            elif isinstance(ev, Data):
                body += ev.data
            elif isinstance(ev, EndOfMessage):
                assert head is not None
                out.append(Response(head.status, head.headers, body))
    return out


async def closed(stream: trio.abc.Stream) -> bool:
    """True once the server has dropped the connection (EOF, truncation or reset)."""
    try:
        while await stream.receive_some():
            pass
        return True
    except trio.BrokenResourceError:
        return True


def capture_access_log() -> Iterator[AccessLog]:
    handler = AccessLog()
    logger = logging.getLogger("meshgate.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


__all__ = [
    "NOW",
    "AccessLog",
    "AccessRecord",
    "Harness",
    "Received",
    "RecordingApp",
    "Response",
    "capture_access_log",
    "closed",
    "copy_policies",
    "policy_dir_with",
    "read_responses",
]
