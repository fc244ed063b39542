"""A real `mesh-ca serve` with a control plane, and mTLS clients that speak its API.

`control_ca` makes a CA directory whose `[control]` names a copy of the shipped policies
(policies/, which let shop workloads register their own service); `Caller` posts JSON over
mTLS as one workload, with an SVID signed offline by the CA's intermediate.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from mesh_ca.ca_dir import LoadedCa, init_ca_dir
from mesh_ca.config import CaConfig, ServerConfig, StoreConfig
from mesh_ca.control.config import ControlConfig
from mesh_ca.issuance import issue_leaf, make_csr
from meshgate.identity import BundleSet, SpiffeId
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import TRUST_DOMAIN, CaServer, RawReply, https_request

ROOT = Path(__file__).resolve().parent.parent
JSON = [("content-type", "application/json")]


def shop(service: str) -> SpiffeId:
    return SpiffeId.workload(TRUST_DOMAIN, "shop", service)


def control_ca(
    directory: Path,
    *,
    store: StoreConfig | None = None,
    server: ServerConfig | None = None,
    **control: Any,
) -> LoadedCa:
    """A CA directory with a control plane over `directory/policies` (a copy of policies/)."""
    policies = directory / "policies"
    shutil.copytree(ROOT / "policies", policies)
    (policies / "tests.toml").unlink()
    config = CaConfig(
        trust_domain=TRUST_DOMAIN,
        server=server or ServerConfig(),
        store=store or StoreConfig(),
        control=ControlConfig(policy_dir=str(policies), **control),
    )
    return init_ca_dir(directory / "ca", TRUST_DOMAIN, datetime.now(UTC), config=config)


@dataclass
class Caller:
    """One workload talking to the control plane over mTLS (a fresh connection a call)."""

    server: CaServer
    spiffe_id: SpiffeId
    context: ssl.SSLContext

    @classmethod
    def of(cls, server: CaServer, spiffe_id: SpiffeId) -> Caller:
        key = generate_key()
        cert = issue_leaf(make_csr(key), spiffe_id, server.ca.signer, datetime.now(UTC))
        chain = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (cert, server.ca.signer.cert)
        )
        context = client_context(BundleSet.of(server.ca.bundle), chain, private_key_pem(key))
        return cls(server, spiffe_id, context)

    async def post(self, path: str, body: dict[str, Any] | bytes) -> RawReply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await https_request(
            self.server, "POST", path, data, headers=JSON, context=self.context
        )

    async def ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.post(path, body)
        assert reply.status == 200, (reply.status, reply.body)
        result: dict[str, Any] = json.loads(reply.body)
        return result

    async def register(self, service: str, address: str, protocol: str = "http") -> RawReply:
        return await self.post(
            "/v1/control/register", {"service": service, "address": address, "protocol": protocol}
        )

    async def watch(self, service: str, after: int, wait_ms: int = 20_000) -> dict[str, Any]:
        return await self.ok(
            "/v1/control/endpoints", {"service": service, "after": after, "wait_ms": wait_ms}
        )


def admin_get(address: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


async def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Wait (polling) until `condition()` holds; fail after `seconds`."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.05)
