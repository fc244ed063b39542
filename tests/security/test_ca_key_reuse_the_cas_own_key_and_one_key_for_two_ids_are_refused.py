"""Attack class: key reuse at the CA (a CSR over the CA's own key; one key under two IDs).

Advisory: no CVE names this class for a SPIFFE CA; it is finding 8 of meshgate issue 12
(adversarial review). The closest public rule is the CA/Browser Forum Baseline
Requirements' duty to refuse a request whose public key the CA knows to be unsuitable
(TLS BR section 6.1.1.3): a CA key is such a key, and a key already certifying another
identity lets one key holder speak as two workloads.

Against a real `mesh_ca.server` process: a bootstrap whose CSR uses the CA's intermediate
or root key is refused 400 ``ca_key``; a bootstrap of a second ID with a key already
issued to a first ID is refused 409 ``key_bound``; the token of each refused request stays
unused and the ledger holds nothing for them. The first ID may renew with its own key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.issuance import make_csr
from meshgate.identity import SpiffeId
from meshgate.keys import PrivateKey, generate_key, load_private_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import TRUST_DOMAIN, CaServer, https_request, running_ca_server

JSON = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(
        tmp_path_factory.mktemp("ca"), rate_limit_per_second=1000.0, rate_limit_burst=1000
    ) as running:
        yield running
    assert running.process.returncode == 0, running.log()


def _csr(key: PrivateKey) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode()


def _ca_keys(server: CaServer) -> list[PrivateKey]:
    return [server.ca.signer.key, load_private_key(Path(server.ca.path) / "root.key")]


def _issued_ids(server: CaServer) -> list[str]:
    store = server.store()
    try:
        return [str(r.spiffe_id) for r in store.issued(limit=1000) if r.kind != "ca-server"]
    finally:
        store.close()


async def test_the_ca_refuses_its_own_keys_and_a_key_already_bound_to_another_id(
    server: CaServer,
) -> None:
    victim = SpiffeId.workload(TRUST_DOMAIN, "sec", "victim")
    for ca_key in _ca_keys(server):
        token = server.token(SpiffeId.workload(TRUST_DOMAIN, "sec", "ca-key"))
        body = json.dumps({"token": token, "csr": _csr(ca_key)}).encode()
        reply = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
        assert reply.status == 400, reply.body
        assert json.loads(reply.body)["error"] == "ca_key"

    key = generate_key()
    body = json.dumps({"token": server.token(victim), "csr": _csr(key)}).encode()
    first = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
    assert first.status == 200, first.body

    attacker = SpiffeId.workload(TRUST_DOMAIN, "sec", "attacker")
    body = json.dumps({"token": server.token(attacker), "csr": _csr(key)}).encode()
    refused = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
    assert refused.status == 409, refused.body
    assert json.loads(refused.body)["error"] == "key_bound"
    assert str(victim) not in refused.body.decode()

    # The holder renews with the same key over mTLS: allowed.
    chain_pem = json.loads(first.body)["chain_pem"].encode()
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    context = client_context(server.bundles, chain_pem, private_key_pem(key))
    body = json.dumps({"csr": _csr(key)}).encode()
    renewed = await https_request(server, "POST", "/v1/renew", body, headers=JSON, context=context)
    assert renewed.status == 200, renewed.body
    assert json.loads(renewed.body)["serial"] != format(leaf.serial_number, "x")
    assert _issued_ids(server) == [str(victim), str(victim)]
