"""Two real ``mesh-ca serve`` replicas on one real PostgreSQL: tokens are used once across
replicas, revocations are seen by both, renewals fail over, and a database outage makes
both unready (503) until the database returns, with no restart of the replicas."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.cli import main as mesh_ca_main
from mesh_ca.client import CaClient, CaClientError, CaUnavailable, IssuedSvid
from mesh_ca.issuance import issue_leaf, make_csr
from mesh_ca.store import StateStore
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.keys import PrivateKey, generate_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import CaServer, https_request, serving_ca_dir
from tests.pg_server import PgServer, running_postgres

pytestmark = pytest.mark.postgres

TD = "example.org"
PASSWORD_ENV = "MESH_TEST_REPLICA_PG_PASSWORD"
ADMIN = SpiffeId.parse(f"spiffe://{TD}/ops/admin")
JSON = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    """This module's own server: the outage test stops and restarts it."""
    with running_postgres() as server:
        yield server


@dataclass
class Replicas:
    a: CaServer
    b: CaServer

    def client(self, *servers: CaServer) -> CaClient:
        return CaClient(
            [s.address for s in servers], TrustDomain(TD), self.a.bundles, timeout_seconds=10
        )

    def store(self) -> StateStore:
        return self.a.store()

    def token(self, spiffe_id: SpiffeId) -> str:
        return self.a.token(spiffe_id)


@pytest.fixture
def replicas(
    postgres: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Replicas]:
    """`mesh-ca init --store postgres`, a copy of the directory, and both served."""
    postgres.start()  # a no-op unless an earlier test left it stopped
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    url = postgres.url(postgres.create_database())
    dir_a, dir_b = tmp_path / "ca-a", tmp_path / "ca-b"
    init = ["init", "--trust-domain", TD, "--dir", str(dir_a), "--store", "postgres"]
    assert mesh_ca_main([*init, "--db-url", url, "--db-password-env", PASSWORD_ENV]) == 0
    config = dir_a / "ca.toml"
    text = config.read_text()
    for old, new in (
        ("rate_limit_per_second = 50.0", "rate_limit_per_second = 10000.0"),
        ("admin_ids = []", f'admin_ids = ["{ADMIN}"]'),
    ):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    shutil.copytree(dir_a, dir_b)  # the documented way to make a replica
    with contextlib.ExitStack() as stack:
        servers = _serve_both(stack, tmp_path)
        yield Replicas(*servers)
    for server in servers:
        assert server.process.returncode in (0, -signal.SIGKILL), server.log()
    assert postgres.password not in servers[0].log() + servers[1].log()


def _serve_both(stack: contextlib.ExitStack, tmp_path: Path) -> list[CaServer]:
    """`mesh-ca serve --replica a|b` of tmp_path/ca-a and ca-b, stopped with `stack`."""
    serve = ("-m", "mesh_ca.cli", "serve")
    return [
        stack.enter_context(
            serving_ca_dir(
                load_ca_dir(tmp_path / f"ca-{name}"),
                tmp_path / f"replica-{name}.log",
                argv=serve,
                extra=("--replica", name),
            )
        )
        for name in ("a", "b")
    ]


def workload(name: str) -> SpiffeId:
    return SpiffeId.workload(TD, "test", name)


def issued_rows(replicas: Replicas, kind: str) -> list[tuple[int, str, str]]:
    store = replicas.store()
    try:
        return [
            (r.serial, str(r.spiffe_id), r.replica)
            for r in store.issued(limit=10_000)
            if r.kind == kind
        ]
    finally:
        store.close()


async def test_100_concurrent_bootstraps_with_50_tokens_over_both_replicas_give_50_svids(
    replicas: Replicas,
) -> None:
    ids = [workload(f"boot{index}") for index in range(50)]
    tokens = [replicas.token(sid) for sid in ids]
    issued: list[IssuedSvid] = []
    refused: list[str] = []

    async def attempt(client: CaClient, token: str) -> None:
        try:
            issued.append(await client.bootstrap(token, generate_key()))
        except CaClientError as exc:
            refused.append(exc.code)

    async with (
        replicas.client(replicas.a) as at_a,
        replicas.client(replicas.b) as at_b,
        trio.open_nursery() as nursery,
    ):
        for token in tokens:  # each token at both replicas at once
            nursery.start_soon(attempt, at_a, token)
            nursery.start_soon(attempt, at_b, token)
    assert len(issued) == 50
    assert refused == ["token_used"] * 50
    assert sorted(str(s.spiffe_id) for s in issued) == sorted(str(sid) for sid in ids)
    rows = issued_rows(replicas, "bootstrap")
    assert len(rows) == 50
    assert len({serial for serial, _, _ in rows}) == 50
    assert {serial for serial, _, _ in rows} == {s.serial for s in issued}
    assert {replica for _, _, replica in rows} <= {"a", "b"}


def admin_context(replicas: Replicas) -> object:
    ca = replicas.a.ca
    key = generate_key()
    leaf = issue_leaf(make_csr(key), ADMIN, ca.signer, datetime.now(UTC))
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca.signer.cert))
    return client_context(replicas.a.bundles, chain, private_key_pem(key))


async def test_a_revocation_through_replica_a_blocks_renewal_through_replica_b(
    replicas: Replicas,
) -> None:
    sid = workload("victim")
    key = generate_key()
    async with replicas.client(replicas.b) as at_b, replicas.client(replicas.a) as at_a:
        svid = await at_b.bootstrap(replicas.token(sid), key)
        new_key = generate_key()
        svid = await at_b.renew(svid.chain, key, new_key)  # renewals work before
        key = new_key
        reply = await https_request(
            replicas.a,
            "POST",
            "/v1/admin/revoke",
            json.dumps({"spiffe_id": str(sid), "reason": "test"}).encode(),
            headers=JSON,
            context=admin_context(replicas),  # type: ignore[arg-type]
        )
        assert reply.status == 200, reply.body
        for client in (at_b, at_a):
            with pytest.raises(CaClientError) as caught:
                await client.renew(svid.chain, key, generate_key())
            assert (caught.value.status, caught.value.code) == (403, "revoked")
        reply = await https_request(replicas.b, "GET", "/v1/revocations")
        assert str(sid) in json.loads(reply.body)["spiffe_ids"]
    assert [row[1] for row in issued_rows(replicas, "renew")] == [str(sid)]


async def test_killing_replica_a_while_clients_renew_keeps_renewals_working_through_b(
    replicas: Replicas,
) -> None:
    renewed: list[tuple[bool, str]] = []  # (sent after the kill, serial)
    killed = trio.Event()

    async def sidecar(index: int, client: CaClient) -> None:
        key = generate_key()
        svid = await client.bootstrap(replicas.token(workload(f"renew{index}")), key)
        while len(renewed) < 60:
            new_key = generate_key()
            late = killed.is_set()
            svid = await client.renew(svid.chain, key, new_key)  # any failure fails the test
            key = new_key
            renewed.append((late, format(svid.serial, "x")))
            if len(renewed) == 12 and not killed.is_set():
                replicas.a.process.send_signal(signal.SIGKILL)
                replicas.a.process.wait()
                killed.set()

    async with replicas.client(replicas.a, replicas.b) as client:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(4):
                    nursery.start_soon(sidecar, index, client)
    after = {serial for late, serial in renewed if late}
    assert len(after) >= 40
    rows = {format(serial, "x"): replica for serial, _, replica in issued_rows(replicas, "renew")}
    assert {rows[serial] for serial in after} == {"b"}
    observed = {serial for _, serial in renewed}
    assert len(observed) == len(renewed)  # no serial handed out twice
    assert observed <= rows.keys()  # every SVID a client got is in the ledger
    # A renewal replica A committed just before SIGKILL, whose response never left, is in
    # the ledger but was never seen by its client (which then renewed through B): at most
    # one per client in flight at the kill, and only from A.
    unseen = rows.keys() - observed
    assert len(unseen) <= 4
    assert {rows[serial] for serial in unseen} <= {"a"}


async def wait_ready(server: CaServer, want: int, seconds: float = 20) -> dict[str, str]:
    with trio.fail_after(seconds):
        while True:
            reply = await https_request(server, "GET", "/readyz")
            if reply.status == want:
                return dict(json.loads(reply.body))
            await trio.sleep(0.1)


async def test_a_database_outage_makes_both_unready_and_refuses_issuance_then_both_recover(
    replicas: Replicas, postgres: PgServer
) -> None:
    servers = (replicas.a, replicas.b)
    for server in servers:
        await wait_ready(server, 200)
    pending = [replicas.token(workload(f"outage{index}")) for index in range(2)]
    postgres.stop()
    try:
        for server, token in zip(servers, pending, strict=True):
            assert (await wait_ready(server, 503))["error"] == "store_unavailable"
            body = json.dumps({"token": token, "csr": _csr_pem(generate_key())}).encode()
            reply = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
            assert reply.status == 503
            error = json.loads(reply.body)
            assert error["error"] == "store_unavailable"
            assert "retry" in error["message"]
            assert reply.headers["retry-after"].isdigit()
        async with replicas.client(*servers) as client:
            with pytest.raises(CaUnavailable) as caught:
                await client.bootstrap(pending[0], generate_key())
            assert caught.value.status == 503
        # Health (liveness) does not depend on the database: nobody should restart us.
        assert (await https_request(replicas.a, "GET", "/healthz")).status == 200
    finally:
        postgres.start()
    for server in servers:
        assert (await wait_ready(server, 200))["status"] == "ready"
    for server, token in zip(servers, pending, strict=True):
        async with replicas.client(server) as client:
            svid = await client.bootstrap(token, generate_key())  # unused during the outage
            assert svid.spiffe_id.path.startswith("/ns/test/svc/outage")
    assert all(server.process.poll() is None for server in servers)


def _csr_pem(key: PrivateKey) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode()


def test_init_postgres_flags_are_checked_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ca"
    base = ["init", "--trust-domain", TD, "--dir", str(directory)]
    assert mesh_ca_main([*base, "--store", "postgres"]) == 2
    assert "--db-url" in capsys.readouterr().err
    assert mesh_ca_main([*base, "--db-url", "postgresql://x@127.0.0.1/db"]) == 2
    assert "--db-url: only with --store postgres" in capsys.readouterr().err
    missing = tmp_path / "nope"
    args = [*base, "--store", "postgres", "--db-url", "postgresql://x@127.0.0.1/db"]
    assert mesh_ca_main([*args, "--db-password-file", str(missing)]) == 2
    assert "--db-password-file" in capsys.readouterr().err
    assert not directory.exists()


def test_init_against_an_unreachable_database_fails_whole(
    tmp_path: Path, postgres: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("not-the-password\n")
    secret.chmod(0o600)
    directory = tmp_path / "ca"
    url = f"postgresql://nobody@127.0.0.1:{postgres.port}/none"
    argv = ["init", "--trust-domain", TD, "--dir", str(directory), "--store", "postgres"]
    assert mesh_ca_main([*argv, "--db-url", url, "--db-password-file", str(secret)]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL nobody@127.0.0.1" in err
    assert "not-the-password" not in err
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == [secret]


async def test_killing_replica_a_moves_registration_and_discovery_to_b(
    postgres: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control plane survives a replica's death as renewals do: a client given both
    replicas registers and watches through A; A is killed; a second instance registers
    through B, and the watch (re-polled through the same client) sees both, from B."""
    from mesh_ca.control.wire import ENDPOINTS_PATH, REGISTER_PATH, EndpointSet

    postgres.start()
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    url = postgres.url(postgres.create_database())
    dir_a, dir_b = tmp_path / "ca-a", tmp_path / "ca-b"
    init = ["init", "--trust-domain", TD, "--dir", str(dir_a), "--store", "postgres"]
    assert mesh_ca_main([*init, "--db-url", url, "--db-password-env", PASSWORD_ENV]) == 0
    policies = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parents[1] / "policies", policies)
    with (dir_a / "ca.toml").open("a") as toml:
        toml.write(f'\n[control]\npolicy_dir = "{policies}"\n')
    shutil.copytree(dir_a, dir_b)
    orders = SpiffeId.parse(f"spiffe://{TD}/ns/shop/svc/orders")
    with contextlib.ExitStack() as stack:
        a, b = _serve_both(stack, tmp_path)
        replicas = Replicas(a, b)
        async with replicas.client(a, b) as client:  # A first: the client uses A while it lives
            key = generate_key()
            svid = await client.bootstrap(replicas.token(orders), key)

            async def register(port: int) -> None:
                body = {"service": "orders", "address": f"127.0.0.1:{port}", "protocol": "http"}
                await client.call(REGISTER_PATH, json.dumps(body).encode(), svid.chain, key)

            async def watch(after: int) -> EndpointSet:
                body = json.dumps({"service": "orders", "after": after, "wait_ms": 5000})
                raw = await client.call(
                    ENDPOINTS_PATH, body.encode(), svid.chain, key, timeout_seconds=15
                )
                return EndpointSet.model_validate_json(raw)

            with trio.fail_after(60):
                await register(7001)
                seen = await watch(0)
                assert [e.address for e in seen.endpoints] == ["127.0.0.1:7001"]
                a.process.send_signal(signal.SIGKILL)
                a.process.wait()
                await register(7002)  # a second instance, through B: A is gone
                await register(7001)  # the first one renews its lease through B
                now = await watch(seen.version)  # long-polls B for a version after A's
                assert now.version > seen.version
                assert sorted(e.address for e in now.endpoints) == [
                    "127.0.0.1:7001",
                    "127.0.0.1:7002",
                ]
                assert {e.spiffe_id for e in now.endpoints} == {str(orders)}
