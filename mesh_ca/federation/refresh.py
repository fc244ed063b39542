"""The CA's federation loop (trio shell around `FederationState`).

Every ``federation.check_seconds`` it re-reads ``[federation]`` from ca.toml (a bad file is
logged and the relationships stay as they were), drops removed trust domains at once, and
fetches each due bundle: from its bundle endpoint (`fetch_bundle`, ``https_spiffe``) at the
bundle's ``spiffe_refresh_hint``, or from its bundle file. A fetched bundle is kept in
``federation/TD.json`` in the CA directory, so that after a restart the endpoint is
authenticated with the latest bundle, not the bootstrap one (Federation 5.2.2.4). Whatever
changes, `publish` gets the new document for ``/v1/federation/bundles``. A failure is
logged and counted, the last good bundle keeps being served, and the fetch is retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh_ca.federation.config import FederationConfig
from mesh_ca.federation.fetch import BundleFetchError, fetch_bundle
from mesh_ca.federation.state import FederationState, Relationship, read_bundle, stored_bundle_path
from meshgate.clock import Clock
from meshgate.files import write_atomic
from meshgate.identity import BundleError, TrustBundle, TrustDomain
from meshgate.identity.federation import parse_endpoint_url

__all__ = ["FederationLoop"]

log = logging.getLogger("mesh_ca.federation")


class FederationLoop:
    def __init__(
        self,
        ca_path: Path,
        local: TrustBundle,
        config: FederationConfig,
        publish: Callable[[bytes], None],
        clock: Clock,
        registry: CollectorRegistry | None = None,
        *,
        read_config: Callable[[], FederationConfig] | None = None,
    ) -> None:
        self.ca_path = ca_path
        self.state = FederationState(local)
        self.config = config
        self._publish = publish
        self._published: bytes | None = None
        self.clock = clock
        self._read_config = read_config or self._read_ca_toml
        self.refreshes = Counter(
            "mesh_ca_federation_refreshes",
            "Fetches or re-reads of federated trust bundles, by trust domain and result",
            ["trust_domain", "result"],
            registry=registry,
        )
        self.last_refresh = Gauge(
            "mesh_ca_federated_bundle_refreshed_timestamp_seconds",
            "When each federated trust domain's bundle was last fetched or read successfully",
            ["trust_domain"],
            registry=registry,
        )
        self.trust_domains = Gauge(
            "mesh_ca_federated_trust_domains",
            "Foreign trust domains this CA serves a bundle for",
            registry=registry,
        )

    def _read_ca_toml(self) -> FederationConfig:
        from mesh_ca.config import CONFIG_FILE, load_config

        return load_config(self.ca_path / CONFIG_FILE).federation

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Configure, refresh what is due and publish; once before `started`, then forever."""
        await self.tick(reread=False)
        task_status.started()
        while True:
            now = self.clock.now()
            wait = float(self.config.check_seconds)
            for relationship in self.state.relationships.values():
                if relationship.next_at is not None:
                    wait = min(wait, (relationship.next_at - now).total_seconds())
            await trio.sleep(max(0.05, wait))
            await self.tick(reread=True)

    async def tick(self, *, reread: bool) -> None:
        if reread:
            try:
                self.config = await trio.to_thread.run_sync(self._read_config)
            except Exception as exc:  # noqa: BLE001 - a bad edit must not stop the CA
                log.error(
                    json.dumps(
                        {
                            "event": "federation_config_refused",
                            "error": str(exc),
                            "kept": [td.name for td in self.state.relationships],
                        }
                    )
                )
        added, removed = self.state.configure(self.config.trust_domains, self._stored())
        for td in removed:
            self._forget(td)
        for td in added:
            log.info(json.dumps({"event": "federation_added", "trust_domain": td.name}))
        for relationship in self.state.due(self.clock.now()):
            await self._refresh(relationship)
        self.trust_domains.set(len(self.state.bundles()))
        document = self.state.document()
        if document != self._published:
            self._published = document
            self._publish(document)

    def _stored(self) -> dict[TrustDomain, TrustBundle]:
        """Latest bundles persisted by an earlier run, for trust domains not yet known."""
        found: dict[TrustDomain, TrustBundle] = {}
        for entry in self.config.trust_domains:
            if entry.domain in self.state.relationships or entry.bundle_endpoint_url is None:
                continue
            path = self._stored_path(entry.domain)
            try:
                found[entry.domain] = TrustBundle.from_spiffe_json(entry.domain, path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, BundleError) as exc:
                log.warning(
                    json.dumps({"event": "federation_stored_bundle_unusable", "error": str(exc)})
                )
        return found

    def _stored_path(self, td: TrustDomain) -> Path:
        return stored_bundle_path(self.ca_path, td.name)

    def _forget(self, td: TrustDomain) -> None:
        """Federation 6.3: the relationship ends, and so does the local copy."""
        self._stored_path(td).unlink(missing_ok=True)
        with contextlib.suppress(KeyError):  # never refreshed: no such series
            self.last_refresh.remove(td.name)
        log.warning(
            json.dumps(
                {
                    "event": "federation_removed",
                    "trust_domain": td.name,
                    "effect": "its SVIDs are refused once sidecars poll",
                }
            )
        )

    async def _refresh(self, relationship: Relationship) -> None:
        entry = relationship.config
        td = entry.domain
        now = self.clock.now()
        try:
            if entry.bundle_file is not None and (
                relationship.bundle is None or entry.bundle_endpoint_url is None
            ):
                path = self.ca_path / entry.bundle_file
                data = await trio.to_thread.run_sync(path.read_bytes)
                bundle = read_bundle(td, data, f"federation bundle_file {path}")
                self._accept(relationship, bundle, "file")
            if entry.bundle_endpoint_url is not None:
                endpoint_id = entry.endpoint_id
                assert endpoint_id is not None  # checked by FederatedDomainConfig
                endpoint_bundle = self.state.endpoint_bundle(relationship)
                if endpoint_bundle is None:
                    raise BundleFetchError(
                        f"no bundle for {endpoint_id.trust_domain} to authenticate "
                        f"{entry.bundle_endpoint_url} (set bundle_file for the first fetch)"
                    )
                bundle = await fetch_bundle(
                    parse_endpoint_url(entry.bundle_endpoint_url),
                    td,
                    endpoint_id,
                    endpoint_bundle,
                    now,
                )
                first = relationship.source != "endpoint"
                if self._accept(relationship, bundle, "endpoint") or first:
                    await self._persist(td, bundle)
        except (OSError, BundleError, BundleFetchError) as exc:
            message = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror}: {exc}"
            self.state.failed(relationship, message, self.clock.now())
            self.refreshes.labels(td.name, "error").inc()
            log.error(
                json.dumps(
                    {
                        "event": "federation_refresh_failed",
                        "trust_domain": td.name,
                        "error": message,
                        "kept": relationship.bundle is not None,
                        "retry_at": relationship.next_at.isoformat()
                        if relationship.next_at
                        else None,
                    }
                )
            )
            return
        self.refreshes.labels(td.name, "ok").inc()
        self.last_refresh.labels(td.name).set(now.timestamp())

    def _accept(self, relationship: Relationship, bundle: TrustBundle, source: str) -> bool:
        changed = self.state.accept(relationship, bundle, self.clock.now(), source)
        if changed:
            log.info(
                json.dumps(
                    {
                        "event": "federated_bundle_updated",
                        "trust_domain": bundle.trust_domain.name,
                        "source": source,
                        "roots": len(bundle.roots),
                        "spiffe_sequence": bundle.sequence,
                        "refresh_hint_seconds": bundle.refresh_hint_seconds,
                    }
                )
            )
        return changed

    async def _persist(self, td: TrustDomain, bundle: TrustBundle) -> None:
        path = self._stored_path(td)
        data = (json.dumps(bundle.to_spiffe_json(), indent=2) + "\n").encode()

        def write() -> None:
            path.parent.mkdir(mode=0o755, exist_ok=True)
            write_atomic(path, data)

        try:
            await trio.to_thread.run_sync(write)
        except OSError as exc:
            log.error(
                json.dumps(
                    {
                        "event": "federation_persist_failed",
                        "trust_domain": td.name,
                        "error": str(exc),
                    }
                )
            )
