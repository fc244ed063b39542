"""Sends the control plane a report every few seconds: per-edge deltas and our status.

The trio shell around `sidecar.observe.report`: every ``report.interval_seconds`` it reads
the metrics registry that ``/metrics`` serves (with workers, their sum), subtracts the
baseline of the last report the CA accepted, adds the status (readiness, policy version,
SVID, trust bundle, version, clock) and recent denial samples, and POSTs it with
`mesh_ca.client.CaClient.report` as the current SVID. Only a 200 moves the baseline: a
report the CA did not take (down, refused, rate-limited) is sent again, summed, with the
next one, so the control plane's counts match the sidecar's own in the end.

Runs where the identity lifecycle runs (the single process, or the workers' parent), only
with a CA. A failing report never affects traffic; it is logged when the outcome changes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol, final

import trio
from cryptography import x509
from pydantic import ValidationError

from mesh_ca.client import CaClientError
from mesh_ca.control.report_wire import (
    MAX_DENIAL_SAMPLES,
    MAX_EDGES,
    MAX_REPORT_BYTES,
    DenialSample,
    Report,
)
from meshgate.clock import Clock
from meshgate.identity import BundleSet
from meshgate.keys import PrivateKey
from sidecar.config import SidecarConfig
from sidecar.identity.credentials import CredentialStore
from sidecar.identity.stats import IdentityStats
from sidecar.observe.admin import AdminState, PolicyView, readiness
from sidecar.observe.logs import event
from sidecar.observe.metrics import SidecarMetrics
from sidecar.observe.report import Cumulative, EdgeKey, deltas, edge_totals, sent_keys
from sidecar.observe.report_status import instance_name, sidecar_status, wants_reporter

__all__ = [
    "ReportClient",
    "Reporter",
    "ca_client_factory",
    "read_sample_files",
    "start_reporter",
    "wants_reporter",
    "write_samples_forever",
]

log = logging.getLogger("sidecar.observe.reporter")


class ReportClient(Protocol):
    """The part of `mesh_ca.client.CaClient` the reporter uses; tests pass a fake."""

    async def report(
        self, body: bytes, chain: tuple[x509.Certificate, ...], key: PrivateKey
    ) -> bytes: ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[BundleSet], ReportClient]


def ca_client_factory(config: SidecarConfig, clock: Clock) -> ClientFactory:
    """Clients of the configured CA addresses that recognise the CA by `bundles`."""
    from mesh_ca.client import CaClient

    def make(bundles: BundleSet) -> ReportClient:
        return CaClient(
            [str(address) for address in config.identity.ca_addresses],
            config.identity.spiffe_id.trust_domain,
            bundles,
            timeout_seconds=min(10.0, config.report.interval_seconds * 2),
            clock=clock,
        )

    return make


_SAMPLE_FILES: Final = "denials-*.json"
_READY_POLL_SECONDS: Final = 0.2


async def write_samples_forever(
    take: Callable[[], list[dict[str, Any]]], directory: Path, every_seconds: float = 1.0
) -> None:
    """A worker's half of the denial-sample relay (``workers > 1``): every second, the
    samples taken since are written to a new file in the runtime directory
    (``denials-PID-N.json``, atomically), which the parent reads and removes
    (`read_sample_files`). One file per write: no file is ever written twice."""
    from meshgate.files import write_atomic

    sequence = 0
    while True:
        await trio.sleep(every_seconds)
        samples = take()
        if samples:
            sequence += 1
            path = directory / f"denials-{os.getpid()}-{sequence}.json"
            try:
                write_atomic(path, json.dumps(samples).encode(), 0o600)
            except OSError as exc:
                event(log, "cannot relay denial samples", level=logging.WARNING, error=str(exc))


def read_sample_files(directory: Path) -> list[dict[str, Any]]:
    """The parent's half: the samples the workers wrote since the last call (files removed),
    oldest first; at most the newest `MAX_DENIAL_SAMPLES`."""
    samples: list[dict[str, Any]] = []
    for path in sorted(directory.glob(_SAMPLE_FILES), key=lambda p: p.stat().st_mtime):
        try:
            loaded = json.loads(path.read_bytes())
            path.unlink()
        except (OSError, ValueError):
            continue
        if isinstance(loaded, list):
            samples.extend(s for s in loaded if isinstance(s, dict))
    return samples[-MAX_DENIAL_SAMPLES:]


def _valid_samples(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples the CA will take (a request's method or path may be anything)."""
    kept = []
    for sample in samples:
        try:
            DenialSample.model_validate_json(json.dumps(sample))
        except (ValidationError, TypeError, ValueError):
            continue
        kept.append(sample)
    return kept[-MAX_DENIAL_SAMPLES:]


@final
class Reporter:
    def __init__(
        self,
        config: SidecarConfig,
        store: CredentialStore,
        metrics: SidecarMetrics,
        status: Callable[[], dict[str, Any]],
        clock: Clock,
        client_factory: ClientFactory,
        samples: Callable[[], list[dict[str, Any]]] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.status = status
        self.clock = clock
        self.interval_seconds = config.report.interval_seconds
        self._factory = client_factory
        self._samples_source = samples
        self._ready = ready
        self._reported_ready: bool | None = None  # `ready` as the last attempt saw it
        self._pending_samples: list[dict[str, Any]] = []
        self._baseline: dict[EdgeKey, Cumulative] = {}
        self._current: dict[EdgeKey, Cumulative] = {}
        self._client: ReportClient | None = None
        self._client_bundles: BundleSet | None = None
        self._last_sent = clock.now()
        self._last_outcome = ""
        self.sent = 0
        self.failed = 0

    async def run(self) -> None:
        """Report now and every interval, until cancelled; at once when readiness changes
        (a control-plane sidecar's first report precedes its first policy set: the CA
        would show it not ready for a whole interval after it became ready)."""
        try:
            while True:
                await self.report_once()
                await self.wait_next()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_client()

    async def wait_next(self) -> None:
        """Until the interval has passed or readiness differs from the last attempt's.
        Polled (`readiness` is cheap and pure): its inputs (SVID, revocations, policy
        store, workers) have no common event to wait on."""
        ready = self._ready
        if ready is None:
            await trio.sleep(self.interval_seconds)
            return
        with trio.move_on_after(self.interval_seconds):
            while True:
                await trio.sleep(_READY_POLL_SECONDS)
                if ready() != self._reported_ready:
                    return

    def body(self, now: datetime) -> tuple[bytes, set[EdgeKey]]:
        """The next report's body and the edges it carries (whose baseline a 200 moves)."""
        current = edge_totals(self.metrics.families())
        if self._samples_source is not None:
            fresh = _valid_samples(self._samples_source())
            self._pending_samples = (self._pending_samples + fresh)[-MAX_DENIAL_SAMPLES:]
        status = self.status()
        limit = MAX_EDGES
        while True:  # the busiest edges that fit the CA's size cap; the rest wait
            edges, truncated = deltas(current, self._baseline, limit)
            report = {
                "sent_at": now.isoformat(),
                "interval_seconds": round(max(0.0, (now - self._last_sent).total_seconds()), 3),
                "status": status,
                "edges": edges,
                "truncated_edges": truncated,
                "denial_samples": self._pending_samples,
            }
            text = json.dumps(report).encode()
            if len(text) <= MAX_REPORT_BYTES or limit == 0:
                break
            limit //= 2
        Report.model_validate_json(text)  # what the CA would refuse, refused here first
        self._current = current
        return text, sent_keys(edges)

    async def report_once(self) -> bool:
        """Send one report; True when the CA took it."""
        if self._ready is not None:  # what this attempt says (body() reads it, no await)
            self._reported_ready = self._ready()
        creds = self.store.current
        now = self.clock.now()
        if creds is None or creds.expired(now):
            return False  # no SVID to authenticate with: the CA would not know us
        try:
            body, keys = self.body(now)
        except ValidationError as exc:  # a bug: say so, send the next one
            self._outcome("invalid", f"report refused locally: {exc.errors()[:2]}")
            return False
        try:
            client = await self._client_for(creds.bundles)
            await client.report(body, creds.chain, creds.key)
        except CaClientError as exc:
            self.failed += 1
            self._outcome(exc.code, str(exc))
            return False
        for key in keys:
            self._baseline[key] = self._current[key]
        self._pending_samples = []
        self._last_sent = now
        self.sent += 1
        self._outcome("ok", "")
        return True

    def _outcome(self, code: str, message: str) -> None:
        """Log a change of outcome once (not every interval while the CA is down)."""
        if code == self._last_outcome:
            return
        self._last_outcome = code
        if code == "ok":
            event(log, "reporting to the control plane", interval_seconds=self.interval_seconds)
        else:
            event(
                log,
                "report not accepted; its deltas go with the next one",
                level=logging.WARNING,
                code=code,
                error=message[:300],
            )

    async def _client_for(self, bundles: BundleSet) -> ReportClient:
        if self._client is None or self._client_bundles is not bundles:
            await self._close_client()
            self._client, self._client_bundles = self._factory(bundles), bundles
        return self._client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def start_reporter(
    nursery: trio.Nursery,
    config: SidecarConfig,
    store: CredentialStore,
    clock: Clock,
    metrics: SidecarMetrics,
    stats: IdentityStats,
    *,
    policies: PolicyView | None = None,
    samples: Callable[[], list[dict[str, Any]]] | None = None,
    samples_dir: Path | None = None,
    serving: Callable[[], str | None] | None = None,
) -> None:
    """Report to the control plane in the background, when there is a CA to report to.
    Denial samples come from `samples` (the Observer), or from the files the workers leave
    in `samples_dir` (``workers > 1``)."""
    if not wants_reporter(config):
        return
    state = AdminState(
        config,
        store,
        clock.now,
        metrics=metrics,
        identity_stats=stats,
        policies=policies,
        serving=serving,
    )
    instance, started = instance_name(), clock.now()
    if samples_dir is not None:
        samples = functools.partial(read_sample_files, samples_dir)
    reporter = Reporter(
        config,
        store,
        metrics,
        lambda: sidecar_status(config, state, metrics, instance, started, policies),
        clock,
        ca_client_factory(config, clock),
        samples=samples,
        ready=lambda: readiness(state)[0],
    )
    nursery.start_soon(reporter.run)
