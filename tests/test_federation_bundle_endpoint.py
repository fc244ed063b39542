"""The https_spiffe bundle endpoint, against a real `mesh-ca serve` process on loopback.

A meshgate CA serves its bundle at ``/v1/bundle`` to anyone (no client certificate) under its
own SVID ``spiffe://TD/mesh/ca``. The fetcher accepts it only when the server presents that
ID verified against the bundle held for the endpoint's trust domain; the federation loop
fetches at the refresh interval, keeps the latest bundle in the CA directory, serves it on
``/v1/federation/bundles`` and drops it when the relationship is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from mesh_ca.client import CaClient
from mesh_ca.federation.config import FederationConfig
from mesh_ca.federation.fetch import BundleFetchError, fetch_bundle
from mesh_ca.federation.refresh import FederationLoop
from meshgate.clock import SystemClock
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.identity.federation import parse_endpoint_url
from tests.ca_server_process import TRUST_DOMAIN, CaServer, running_ca_server
from tests.pki import TestPki as Pki

pytestmark = pytest.mark.integration

FOREIGN = TrustDomain(TRUST_DOMAIN)  # the served CA plays the foreign trust domain
ENDPOINT_ID = SpiffeId(FOREIGN, "/mesh/ca")


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(tmp_path_factory.mktemp("foreign")) as server:
        yield server


def _url(server: CaServer, path: str = "/v1/bundle") -> str:
    return f"https://{server.address}{path}"


async def test_the_bundle_is_fetched_when_the_endpoint_proves_its_spiffe_id(
    foreign_ca: CaServer,
) -> None:
    bundle = await fetch_bundle(
        parse_endpoint_url(_url(foreign_ca)),
        FOREIGN,
        ENDPOINT_ID,
        foreign_ca.ca.bundle,
        datetime.now(UTC),
    )
    assert bundle.trust_domain == FOREIGN
    assert bundle.roots == foreign_ca.ca.bundle.roots
    assert bundle.sequence == foreign_ca.ca.bundle.sequence


async def test_an_endpoint_with_another_spiffe_id_is_refused(foreign_ca: CaServer) -> None:
    with pytest.raises(BundleFetchError, match=r"presented spiffe://example\.org/mesh/ca, not"):
        await fetch_bundle(
            parse_endpoint_url(_url(foreign_ca)),
            FOREIGN,
            SpiffeId(FOREIGN, "/spire/server"),
            foreign_ca.ca.bundle,
            datetime.now(UTC),
        )


async def test_an_endpoint_not_chaining_to_the_held_bundle_is_refused(
    foreign_ca: CaServer,
) -> None:
    impostor = Pki(trust_domain=FOREIGN)  # same name, other keys: a man in the middle's
    with pytest.raises(BundleFetchError, match="TLS handshake failed"):
        await fetch_bundle(
            parse_endpoint_url(_url(foreign_ca)),
            FOREIGN,
            ENDPOINT_ID,
            impostor.bundle,
            datetime.now(UTC),
        )


async def test_a_bundle_for_another_trust_domain_cannot_authenticate_the_endpoint(
    foreign_ca: CaServer,
) -> None:
    other = Pki(trust_domain=TrustDomain("b.example"))
    with pytest.raises(BundleFetchError, match=r"is for b\.example"):
        await fetch_bundle(
            parse_endpoint_url(_url(foreign_ca)),
            FOREIGN,
            ENDPOINT_ID,
            other.bundle,
            datetime.now(UTC),
        )


async def test_a_non_bundle_answer_is_refused(foreign_ca: CaServer) -> None:
    with pytest.raises(BundleFetchError, match="HTTP 404"):
        await fetch_bundle(
            parse_endpoint_url(_url(foreign_ca, "/nothing")),
            FOREIGN,
            ENDPOINT_ID,
            foreign_ca.ca.bundle,
            datetime.now(UTC),
        )


async def test_the_loop_refreshes_keeps_the_latest_and_drops_a_removed_domain(
    foreign_ca: CaServer, tmp_path: Path
) -> None:
    local = Pki(trust_domain=TrustDomain("a.example"))
    (tmp_path / "bootstrap.json").write_text(json.dumps(foreign_ca.ca.bundle.to_spiffe_json()))
    federated = FederationConfig.model_validate(
        {
            "check_seconds": 1,
            "trust_domains": [
                {
                    "trust_domain": TRUST_DOMAIN,
                    "bundle_file": "bootstrap.json",
                    "bundle_endpoint_url": _url(foreign_ca),
                    "endpoint_spiffe_id": str(ENDPOINT_ID),
                    "refresh_seconds": 2,
                }
            ],
        }
    )
    current = {"config": federated}
    published: list[dict[str, object]] = []
    loop = FederationLoop(
        tmp_path,
        local.bundle,
        federated,
        lambda doc: published.append(json.loads(doc)),
        SystemClock(),
        read_config=lambda: current["config"],
    )
    with trio.fail_after(60):  # a few 2 s refreshes; generous for a loaded machine
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            assert published[-1]["trust_domains"].keys() == {TRUST_DOMAIN}  # type: ignore[attr-defined]
            stored = tmp_path / "federation" / f"{TRUST_DOMAIN}.json"
            assert json.loads(stored.read_text()) == foreign_ca.ca.bundle.to_spiffe_json()
            ok = loop.refreshes.labels(TRUST_DOMAIN, "ok")
            before = ok._value.get()
            while ok._value.get() < before + 2:  # two more fetches, at the 2 s interval
                await trio.sleep(0.5)
            current["config"] = FederationConfig(check_seconds=1)
            while published[-1] != {"trust_domains": {}}:
                await trio.sleep(0.5)
            assert not stored.exists()  # Federation 6.3: the local copy goes too
            nursery.cancel_scope.cancel()


async def test_the_ca_serves_its_federated_bundles_to_its_sidecars(foreign_ca: CaServer) -> None:
    async with CaClient([foreign_ca.address], FOREIGN, foreign_ca.bundles) as client:
        assert len(await client.fetch_federated_bundles()) == 0
