"""Attack class: cross-domain impersonation through a federated CA.

Advisory: no CVE; the public rule is SPIFFE Federation section 4.2 ("Bundle contents from
different trust domains MUST NOT be merged into a single, larger bundle. Doing so would
enable one trust domain to forge identities belonging to another trust domain"), and
CWE-295 (improper certificate validation). OpenSSL's handshake store holds every trusted
root, federated ones included, and accepts any chain to any of them.

Against a real `mesh-sidecar` (orders in b.example, bootstrapped from a real `mesh-ca
serve`) whose CA federates with a.example: a client holding a.example's real intermediate
key mints SVIDs for ``spiffe://b.example/ns/ops/svc/admin`` (a local ID) and
``spiffe://c.example/ns/shop/svc/web`` (a third domain). B's policy permits both IDs, so
only the trust check can stop them: both are refused at the handshake and the app sees
nothing of them, while a genuine a.example SVID from the same key is served.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.issuance import issue_leaf, make_csr
from meshgate.identity import BundleSet, SpiffeId
from meshgate.identity.bundle import pem_bundle
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import mesh_context
from tests.integration.ca_mesh import serving
from tests.integration.federation_mesh import identity, init_domain_ca, until, write_policies
from tests.integration.recording_app import recording_app
from tests.procs import Sidecar, free_port, running_sidecar, write_config

pytestmark = pytest.mark.integration

ORDERS = SpiffeId.parse("spiffe://b.example/ns/shop/svc/orders")
GENUINE = "spiffe://a.example/ns/shop/svc/web"
FORGED_LOCAL = "spiffe://b.example/ns/ops/svc/admin"
FORGED_THIRD = "spiffe://c.example/ns/shop/svc/web"

POLICY = "".join(
    f'@id("permits-{n}")\n'
    f'permit (principal == Workload::"{sid}", action, resource == Service::"orders");\n'
    for n, sid in enumerate((GENUINE, FORGED_LOCAL, FORGED_THIRD))
)


def _logged(sidecar: Sidecar, text: str) -> bool:
    return text in sidecar.log()


def _ask(port: int, context: ssl.SSLContext, path: str) -> str:
    """One GET over mTLS straight to B's inbound; the status line, or why there was none."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            head = f"GET {path} HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n"
            tls.sendall(head.encode())
            data = tls.recv(65536)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    return data.split(b"\r\n", 1)[0].decode() if data else "refused: closed"


def test_a_federated_cas_key_mints_neither_a_local_nor_a_third_domains_id(tmp_path: Path) -> None:
    ca_a = init_domain_ca(tmp_path / "ca-a", "a.example")
    ca_b = init_domain_ca(tmp_path / "ca-b", "b.example")
    text = (ca_b.path / "ca.toml").read_text()
    text += (
        "\n[federation]\ncheck_seconds = 1\n\n[[federation.trust_domains]]\n"
        f'trust_domain = "a.example"\nbundle_file = "{ca_a.path / "bundle.spiffe.json"}"\n'
    )
    (ca_b.path / "ca.toml").write_text(text)
    signer = load_ca_dir(ca_a.path).signer  # the attacker holds a.example's CA key
    ports = {k: free_port() for k in ("orders_in", "b_adm")}
    with (
        recording_app() as app,
        serving(ca_b, tmp_path / "ca-b.log") as server_b,
    ):
        config = write_config(
            tmp_path / "orders.toml",
            {
                "identity": identity(ca_b, server_b, ORDERS, tmp_path / "orders"),
                "inbound": {
                    "listen": f"127.0.0.1:{ports['orders_in']}",
                    "app": f"127.0.0.1:{app.port}",
                    "service": "orders",
                    "protocol": "http",
                },
                "policy": {"dir": str(write_policies(tmp_path / "policies", POLICY))},
                "admin": {"listen": f"127.0.0.1:{ports['b_adm']}"},
            },
        )

        def client(spiffe_id: str) -> ssl.SSLContext:
            key = generate_key()
            leaf = issue_leaf(
                make_csr(key),
                SpiffeId.parse(spiffe_id),
                signer,
                datetime.now(UTC),
                timedelta(hours=1),
            )
            chain = pem_bundle((leaf, signer.cert))
            return mesh_context("client", chain, private_key_pem(key), BundleSet.of(ca_b.bundle))

        with running_sidecar(config, ports["b_adm"]) as orders:
            until(
                "orders to trust a.example",
                lambda: "now trusts a.example" in orders.log(),
                timeout=30,
            )
            assert _ask(ports["orders_in"], client(GENUINE), "/genuine") == "HTTP/1.1 200 OK"
            for forged in (FORGED_LOCAL, FORGED_THIRD):
                answer = _ask(ports["orders_in"], client(forged), "/forged")
                assert answer.startswith("refused"), (forged, answer)
            assert [path for _, path, _ in app.seen] == ["/genuine"]
            # The sidecar logs a refusal after the client saw it: wait for each line.
            for reason in (
                f"{FORGED_LOCAL} does not chain to the b.example bundle",
                f"{FORGED_THIRD}: no trust bundle for c.example",
                "its trust domain is not federated with this one",
            ):
                until(f"orders to log {reason!r}", partial(_logged, orders, reason), timeout=15)
