"""Two real ``mesh-ca serve`` replicas on one PostgreSQL rotate their shared intermediate:
each step (prepare, activate, retire) is done by exactly one replica, both sign with the
new intermediate within a check interval, and renewals through both keep working."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import hashes

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.cli import main as mesh_ca_main
from mesh_ca.client import CaClient
from mesh_ca.store.trust import trust_store
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.keys import generate_key
from tests.ca_server_process import CaServer, https_request, serving_ca_dir
from tests.pg_server import PgServer

pytestmark = pytest.mark.postgres

TD = "example.org"
PASSWORD_ENV = "MESH_TEST_ROTATION_PG_PASSWORD"
ROTATION = """
[rotation]
intermediate_ttl_seconds = 40
prepare_lead_seconds = 25
activate_lead_seconds = 12
check_interval_seconds = 1.0
"""


@pytest.fixture
def replicas(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CaServer, CaServer]]:
    monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    url = pg_server.url(pg_server.fresh_database())
    dir_a, dir_b = tmp_path / "ca-a", tmp_path / "ca-b"
    init = ["init", "--trust-domain", TD, "--dir", str(dir_a), "--store", "postgres"]
    assert mesh_ca_main([*init, "--db-url", url, "--db-password-env", PASSWORD_ENV]) == 0
    config = dir_a / "ca.toml"
    text = config.read_text().replace(
        "rate_limit_per_second = 50.0", "rate_limit_per_second = 10000.0"
    )
    config.write_text(text + ROTATION)
    shutil.copytree(dir_a, dir_b)
    serve = ("-m", "mesh_ca.cli", "serve")
    with contextlib.ExitStack() as stack:
        a, b = (
            stack.enter_context(
                serving_ca_dir(
                    load_ca_dir(directory),
                    tmp_path / f"replica-{name}.log",
                    argv=serve,
                    extra=("--replica", name),
                )
            )
            for name, directory in (("a", dir_a), ("b", dir_b))
        )
        yield a, b


async def test_each_rotation_step_is_done_once_and_both_replicas_follow(
    replicas: tuple[CaServer, CaServer],
) -> None:
    a, b = replicas
    sid = SpiffeId.workload(TD, "test", "renewer")
    issuers: list[tuple[str, bytes]] = []  # (replica, intermediate that signed) per renewal

    def audit() -> list[tuple[str, str]]:
        store = a.store()
        try:
            return [(e.action, e.actor) for e in reversed(trust_store(store).audit(500))]
        finally:
            store.close()

    async with (
        CaClient([a.address], TrustDomain(TD), a.bundles) as at_a,
        CaClient([b.address], TrustDomain(TD), a.bundles) as at_b,
    ):
        key = generate_key()
        svid = await at_a.bootstrap(a.token(sid), key)
        with trio.fail_after(150):
            while True:
                for name, client in (("a", at_a), ("b", at_b)):
                    new_key = generate_key()
                    svid = await client.renew(svid.chain, key, new_key)  # never refused
                    key = new_key
                    issuers.append((name, svid.chain[1].fingerprint(hashes.SHA256())))
                actions = [action for action, _ in await trio.to_thread.run_sync(audit)]
                if actions.count("intermediate activate") >= 2 and "intermediate retire" in actions:
                    break
                await trio.sleep(0.5)
        await trio.sleep(2.5)  # past one check interval of both replicas
        last = []
        for client in (at_a, at_b):
            new_key = generate_key()
            svid = await client.renew(svid.chain, key, new_key)
            key = new_key
            last.append(svid.chain[1])
        assert last[0] == last[1], "both replicas sign with the active intermediate"

    entries = await trio.to_thread.run_sync(audit)
    steps = [action for action, _ in entries if action != "seed"]
    # Exactly one replica per step: the steps alternate, never one twice in a row.
    for first, second in itertools.pairwise(steps):
        if first == "intermediate prepare":
            assert second in ("intermediate activate", "intermediate retire"), steps
        if first == "intermediate activate":
            assert second != "intermediate activate", steps
    actors = {actor for action, actor in entries if action != "seed"}
    assert actors <= {"replica a (automatic)", "replica b (automatic)"}, actors
    assert len({i for _, i in issuers}) >= 2, "renewals were signed by more than one intermediate"
    for server in (a, b):
        reply = await https_request(server, "GET", "/v1/bundle")
        assert reply.status == 200
    bundles = [json.loads((await https_request(s, "GET", "/v1/bundle")).body) for s in (a, b)]
    assert bundles[0]["spiffe_sequence"] == bundles[1]["spiffe_sequence"]
