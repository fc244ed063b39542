"""A real CA server process on loopback: issuance, renewal, refusals; bad input changes nothing."""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mesh_ca.client import CaClient, CaClientError, IssuedSvid
from mesh_ca.issuance import issue_leaf, make_csr
from meshgate.identity import SpiffeId, TrustDomain, check_leaf_profile
from meshgate.keys import PrivateKey, generate_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import TRUST_DOMAIN, CaServer, https_request, running_ca_server

pytestmark = pytest.mark.integration

ADMIN = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ops/admin")
JSON = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(
        tmp_path_factory.mktemp("ca"),
        rate_limit_per_second=10_000.0,
        rate_limit_burst=10_000,
        admin_ids=(str(ADMIN),),
    ) as running:
        yield running
    assert running.process.returncode == 0, running.log()


def client_of(server: CaServer) -> CaClient:
    return CaClient([server.address], TrustDomain(TRUST_DOMAIN), server.bundles)


def workload(name: str) -> SpiffeId:
    return SpiffeId.workload(TRUST_DOMAIN, "test", name)


def csr_pem(key: PrivateKey) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode()


def ledger(server: CaServer, spiffe_id: SpiffeId | None = None) -> list[tuple[int, str]]:
    store = server.store()
    try:
        return [(r.serial, r.kind) for r in store.issued(spiffe_id, limit=1000)]
    finally:
        store.close()


def offline_svid(server: CaServer, spiffe_id: SpiffeId) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key()
    cert = issue_leaf(make_csr(key), spiffe_id, server.ca.signer, datetime.now(UTC))
    return cert, key


def mtls_context(server: CaServer, cert: x509.Certificate, key: PrivateKey) -> ssl.SSLContext:
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (cert, server.ca.signer.cert)
    )
    return client_context(server.bundles, chain, private_key_pem(key))


async def bootstrap(server: CaServer, spiffe_id: SpiffeId) -> tuple[IssuedSvid, PrivateKey]:
    key = generate_key()
    async with client_of(server) as client:
        return await client.bootstrap(server.token(spiffe_id), key), key


async def test_bootstrap_then_renew_over_mtls_keeps_the_id(server: CaServer) -> None:
    sid = workload("renewing")
    key = generate_key()
    async with client_of(server) as client:
        issued = await client.bootstrap(server.token(sid), key)
        assert issued.spiffe_id == sid
        assert check_leaf_profile(issued.chain[0]) == sid
        assert issued.chain[1] == server.ca.signer.cert
        new_key = generate_key()
        renewed = await client.renew(issued.chain, key, new_key)
    assert renewed.spiffe_id == sid
    assert renewed.serial != issued.serial
    assert renewed.chain[0].public_key() == new_key.public_key()
    assert ledger(server, sid) == [(renewed.serial, "renew"), (issued.serial, "bootstrap")]


async def test_token_replay_is_refused(server: CaServer) -> None:
    sid = workload("replay")
    token = server.token(sid)
    async with client_of(server) as client:
        await client.bootstrap(token, generate_key())
        with pytest.raises(CaClientError) as caught:
            await client.bootstrap(token, generate_key())
    assert (caught.value.status, caught.value.code) == (403, "token_used")
    assert len(ledger(server, sid)) == 1


async def test_fifty_concurrent_uses_of_one_token_give_exactly_one_svid(server: CaServer) -> None:
    sid = workload("race")
    token = server.token(sid)
    issued: list[IssuedSvid] = []
    refused: list[str] = []

    async def use() -> None:
        async with client_of(server) as client:  # one connection each
            try:
                issued.append(await client.bootstrap(token, generate_key()))
            except CaClientError as exc:
                refused.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(use)
    assert len(issued) == 1
    assert refused == ["token_used"] * 49
    assert ledger(server, sid) == [(issued[0].serial, "bootstrap")]


async def test_renewal_by_a_revoked_id_is_refused(server: CaServer) -> None:
    sid = workload("revoked")
    issued, key = await bootstrap(server, sid)
    store = server.store()
    store.revoke(datetime.now(UTC), spiffe_id=sid, reason="test")
    store.close()
    async with client_of(server) as client:
        with pytest.raises(CaClientError) as caught:
            await client.renew(issued.chain, key, generate_key())
        assert sid in (await client.fetch_revocations())[0]
    assert (caught.value.status, caught.value.code) == (403, "revoked")
    assert len(ledger(server, sid)) == 1


async def test_renewal_with_an_expired_svid_is_refused(server: CaServer) -> None:
    sid = workload("expired")
    key = generate_key()
    past = datetime.now(UTC) - timedelta(hours=2)
    cert = issue_leaf(make_csr(key), sid, server.ca.signer, past, timedelta(minutes=5))
    before = ledger(server)
    body = json.dumps({"csr": csr_pem(generate_key())}).encode()
    # OpenSSL on the server refuses the expired client certificate in the handshake.
    with pytest.raises(trio.BrokenResourceError):
        await https_request(
            server, "POST", "/v1/renew", body, headers=JSON, context=mtls_context(server, cert, key)
        )
    # The client does not even try.
    async with client_of(server) as client:
        with pytest.raises(CaClientError) as caught:
            await client.renew((cert, server.ca.signer.cert), key, generate_key())
    assert caught.value.code == "svid_expired"
    assert ledger(server) == before


async def test_renewal_without_a_client_certificate_is_refused(server: CaServer) -> None:
    body = json.dumps({"csr": csr_pem(generate_key())}).encode()
    reply = await https_request(server, "POST", "/v1/renew", body, headers=JSON)
    assert reply.status == 401
    assert json.loads(reply.body)["error"] == "client_cert_required"


async def test_a_csr_asking_for_another_id_or_ca_true_yields_the_bound_profile(
    server: CaServer,
) -> None:
    sid = workload("greedy")
    key = generate_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "root")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/mesh/ca"),
                    x509.DNSName("ca.example.org"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    body = json.dumps(
        {
            "token": server.token(sid),
            "csr": greedy.public_bytes(serialization.Encoding.PEM).decode(),
        }
    ).encode()
    reply = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
    assert reply.status == 200, reply.body
    leaf = x509.load_pem_x509_certificates(json.loads(reply.body)["chain_pem"].encode())[0]
    assert check_leaf_profile(leaf) == sid
    assert leaf.subject == x509.Name([])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))])
    )


def outstanding(server: CaServer) -> set[str]:
    store = server.store()
    try:
        return {str(t.spiffe_id) for t in store.outstanding_tokens(datetime.now(UTC))}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("malformed_csr", 400, "bad_csr"),
        ("unknown_field", 400, "bad_request"),
        ("expects_another_id", 403, "token_wrong_id"),
        ("not_json", 400, "bad_request"),
        ("wrong_token", 401, "token_unknown"),
        ("token_garbage", 401, "token_invalid"),
        ("oversize", 413, "body_too_large"),
        ("content_type", 415, "unsupported_media_type"),
    ],
)
async def test_bad_bootstrap_input_is_a_clear_error_and_changes_nothing(
    server: CaServer, case: str, status: int, code: str
) -> None:
    sid = workload(f"bad-{case.replace('_', '-')}")
    token = server.token(sid)
    fields: dict[str, object] = {"token": token, "csr": csr_pem(generate_key())}
    headers = JSON
    if case == "malformed_csr":
        fields["csr"] = (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"
        )
    elif case == "unknown_field":
        fields["dns_names"] = ["ca.example.org"]
    elif case == "expects_another_id":  # a client cannot pick its ID: refused, token kept
        fields["spiffe_id"] = f"spiffe://{TRUST_DOMAIN}/mesh/ca"
    elif case == "wrong_token":
        fields["token"] = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    elif case == "token_garbage":
        fields["token"] = "not a token"
    elif case == "oversize":
        fields["csr"] = "A" * 100_000
    elif case == "content_type":
        headers = [("content-type", "text/plain")]
    body = b"{not json" if case == "not_json" else json.dumps(fields).encode()
    before = ledger(server)
    reply = await https_request(server, "POST", "/v1/bootstrap", body, headers=headers)
    assert reply.status == status, reply.body
    error = json.loads(reply.body)
    assert error["error"] == code
    assert error["message"]
    assert token.split(".")[1] not in reply.body.decode()  # the secret is never echoed
    assert ledger(server) == before
    assert str(sid) in outstanding(server)  # the token was not consumed


async def test_garbage_instead_of_tls_is_dropped_and_the_server_carries_on(
    server: CaServer,
) -> None:
    stream = await trio.open_tcp_stream(server.host, server.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    with trio.fail_after(10):
        while await stream.receive_some(4096):
            pass  # the server closes (perhaps after a TLS alert)
    await stream.aclose()
    async with client_of(server) as client:
        assert await client.health()


async def test_admin_endpoints_refuse_a_valid_non_admin_svid(server: CaServer) -> None:
    cert, key = offline_svid(server, workload("not-admin"))
    body = json.dumps({"spiffe_id": str(workload("minted"))}).encode()
    context = mtls_context(server, cert, key)
    reply = await https_request(
        server, "POST", "/v1/admin/tokens", body, headers=JSON, context=context
    )
    assert (reply.status, json.loads(reply.body)["error"]) == (403, "not_admin")
    revoke = json.dumps({"spiffe_id": str(workload("victim"))}).encode()
    reply = await https_request(
        server, "POST", "/v1/admin/revoke", revoke, headers=JSON, context=context
    )
    assert (reply.status, json.loads(reply.body)["error"]) == (403, "not_admin")
    reply = await https_request(server, "POST", "/v1/admin/tokens", body, headers=JSON)
    assert reply.status == 401
    assert str(workload("minted")) not in outstanding(server)


async def wait_for_log(server: CaServer, text: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while text not in server.log():
            await trio.sleep(0.05)


async def test_an_admin_svid_creates_a_token_that_bootstraps(server: CaServer) -> None:
    cert, key = offline_svid(server, ADMIN)
    sid = workload("made-by-admin")
    body = json.dumps({"spiffe_id": str(sid), "ttl_seconds": 60}).encode()
    reply = await https_request(
        server,
        "POST",
        "/v1/admin/tokens",
        body,
        headers=JSON,
        context=mtls_context(server, cert, key),
    )
    assert reply.status == 200, reply.body
    made = json.loads(reply.body)
    # The access log is written in batches: wait for this request's line (it names the
    # public token id), then check the secret half is nowhere in the log.
    await wait_for_log(server, made["token_id"])
    token = made["token"]
    assert token.split(".")[1] not in server.log()  # never logged
    async with client_of(server) as client:
        assert (await client.bootstrap(token, generate_key())).spiffe_id == sid


async def test_bundle_revocations_health_and_unknown_routes(server: CaServer) -> None:
    async with client_of(server) as client:
        bundle = await client.fetch_bundle()
        assert bundle.roots == server.ca.bundle.roots
        assert await client.health()
    pem = await https_request(server, "GET", "/v1/bundle.pem")
    assert x509.load_pem_x509_certificates(pem.body) == list(server.ca.bundle.roots)
    assert (await https_request(server, "GET", "/readyz")).status == 200
    assert (await https_request(server, "GET", "/nope")).status == 404
    wrong = await https_request(server, "GET", "/v1/bootstrap")
    assert (wrong.status, wrong.headers.get("allow")) == (405, "POST")


async def test_issuance_is_rate_limited_per_source(tmp_path: Path) -> None:
    with running_ca_server(tmp_path, rate_limit_per_second=0.01, rate_limit_burst=2) as small:
        statuses = []
        for _ in range(3):
            body = json.dumps(
                {"token": small.token(workload("limited")), "csr": csr_pem(generate_key())}
            )
            reply = await https_request(small, "POST", "/v1/bootstrap", body.encode(), headers=JSON)
            statuses.append(reply.status)
        assert statuses == [200, 200, 429]
        assert int(reply.headers["retry-after"]) >= 1
        assert (await https_request(small, "GET", "/healthz")).status == 200  # not limited
    assert small.process.returncode == 0


async def test_access_lines_queued_at_shutdown_are_written(tmp_path: Path) -> None:
    # The access log goes out in batches (every 0.2 s); lines still queued when the server
    # stops are flushed on the way out, not lost.
    with running_ca_server(tmp_path) as running:
        reply = await https_request(running, "GET", "/v1/bundle.pem")
        assert reply.status == 200
        running.process.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(running.process.wait, 15)
    lines = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    assert {"method": "GET", "path": "/v1/bundle.pem", "status": 200}.items() <= next(
        line.items() for line in lines if line.get("path") == "/v1/bundle.pem"
    )
    assert running.process.returncode == 0


async def test_pipelined_and_split_requests_over_a_real_socket(server: CaServer) -> None:
    # The server reads its socket only when nothing is buffered: two requests in one TLS
    # write are both answered, and a request split over two writes is waited for.
    tcp = await trio.open_tcp_stream(server.host, server.port)
    stream = trio.SSLStream(tcp, client_context(server.bundles))
    host = f"Host: {server.address}\r\n".encode()
    try:
        with trio.fail_after(10):
            await stream.send_all(
                b"GET /healthz HTTP/1.1\r\n" + host + b"\r\n"
                b"GET /v1/bundle.pem HTTP/1.1\r\n" + host + b"\r\n"
            )
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n" + host)
            await trio.sleep(0.2)
            await stream.send_all(b"Connection: close\r\n\r\n")
            received = b""
            try:
                while data := await stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass  # closed after "Connection: close" without close_notify
    finally:
        await trio.aclose_forcefully(stream)
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert b"-----BEGIN CERTIFICATE-----" in received


async def test_an_idle_keep_alive_connection_does_not_hold_shutdown(tmp_path: Path) -> None:
    # The drain (5 s) is for requests in progress; a connection that is only waiting for
    # its next request is closed at once, so a restart does not wait for idle clients.
    with running_ca_server(tmp_path) as running:
        tcp = await trio.open_tcp_stream(running.host, running.port)
        stream = trio.SSLStream(tcp, client_context(running.bundles))
        host = f"Host: {running.address}\r\n".encode()
        with trio.fail_after(10):
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n" + host + b"\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
        started = trio.current_time()
        running.process.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(running.process.wait, 15)
        stopped = trio.current_time() - started
        # Closed by the server (with or without close_notify).
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            assert await stream.receive_some(65536) == b""
        await trio.aclose_forcefully(stream)
    assert running.process.returncode == 0
    assert stopped < 3, f"shutdown waited {stopped:.1f} s for an idle connection"
