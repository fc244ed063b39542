"""Cedar decision time: pre-parsed handles vs policy text per call, with and without slicing.

Generates N policies spread over 100 services (plus a few mesh-wide guardrails with an
unconstrained resource, as real sets have), loads them with the sidecar's loader, and times
`decide` on a permitted request. The same run measures a baseline, `decide` on a set of one
trivial policy, at its start and end: the figures are also given as ratios to it, so a
loaded machine (which inflates every figure) can be told apart from a slower engine. Run:

    .venv/bin/python scripts/bench_cedar.py [--sizes 10,100,1000] [--seconds 1.0] [--json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cedarpy

from meshgate.identity import SpiffeId
from sidecar.policy import AccessRequest, decide, load_snapshot
from sidecar.policy.decision import cedar_request
from sidecar.policy.loader import workload_entity

ROOT = Path(__file__).resolve().parent.parent
SERVICES = 100
GUARDRAILS = """
@id("no-delete")
forbid (principal, action == Action::"DELETE", resource);

@id("admin-only-ops")
forbid (principal, action, resource)
when { context.path like "/admin*" } unless { principal in Group::"ops" };

@id("foreign-trust-domain")
forbid (principal, action, resource) unless { principal.trust_domain == "example.org" };
"""


def generate(directory: Path, count: int) -> None:
    """`count` policies in total: the guardrails plus per-service permits."""
    (directory / "mesh.cedarschema").write_text((ROOT / "policies/mesh.cedarschema").read_text())
    (directory / "entities.json").write_text((ROOT / "policies/entities.json").read_text())
    (directory / "guardrails.cedar").write_text(GUARDRAILS)
    lines = []
    for i in range(max(count - 3, 1)):
        service, caller = i % SERVICES, (i // SERVICES) % 50
        lines.append(
            f'@id("p{i}")\n'
            f'permit (principal == Workload::"spiffe://example.org/ns/shop/svc/c{caller}",\n'
            f'  action in Action::"read", resource == Service::"s{service}")\n'
            f'when {{ context.path like "/api/{i}/*" }};\n'
        )
    (directory / "generated.cedar").write_text("\n".join(lines))


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median over 5 batches of the mean CPU time per call (this thread), in microseconds.

    CPU time, not wall time: other work on a shared 2-core machine inflates wall time,
    while the GIL-holding CPU cost is what limits a sidecar's decisions per second.
    """
    fn()
    batch = 1
    while True:  # size a batch to ~seconds/5
        start = time.thread_time()
        for _ in range(batch):
            fn()
        elapsed = time.thread_time() - start
        if elapsed >= seconds / 5 or batch >= 1 << 20:
            break
        batch *= 2
    samples = []
    for _ in range(5):
        start = time.thread_time()
        for _ in range(batch):
            fn()
        samples.append((time.thread_time() - start) / batch * 1e6)
    return statistics.median(samples)


TRIVIAL = '@id("all")\npermit (principal, action, resource);\n'


def baseline(seconds: float) -> dict[str, float]:
    """A trivial one-policy decision through `decide`, and the bare cedarpy call under it."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mesh.cedarschema").write_text(
            (ROOT / "policies/mesh.cedarschema").read_text()
        )
        (directory / "entities.json").write_text("[]")
        (directory / "all.cedar").write_text(TRIVIAL)
        snapshot = load_snapshot(directory, datetime.now(UTC))
    req = AccessRequest(
        SpiffeId.parse("spiffe://example.org/ns/shop/svc/c0"),
        "GET",
        "s0",
        "127.0.0.1",
        datetime.now(UTC),
        path="/",
    )
    assert decide(snapshot, req).allowed
    policy_set = snapshot.policy_set_for("s0")
    entities = snapshot.entities_with(str(req.principal), lambda: "")
    bare = {
        "principal": {"type": "Workload", "id": str(req.principal)},
        "action": {"type": "Action", "id": "GET"},
        "resource": {"type": "Service", "id": "s0"},
        "context": "{}",
    }
    return {
        "decide_us": round(per_call_us(lambda: decide(snapshot, req, cache=False), seconds), 1),
        "cedarpy_us": round(
            per_call_us(lambda: cedarpy.is_authorized(bare, policy_set, entities), seconds), 1
        ),
    }


def bench(count: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        generate(directory, count)
        started = time.perf_counter()
        snapshot = load_snapshot(directory, datetime.now(UTC))
        load_ms = (time.perf_counter() - started) * 1e3
        policy_text = "\n".join(
            (directory / name).read_text() for name in snapshot.files if name.endswith(".cedar")
        )
        schema_text = (directory / "mesh.cedarschema").read_text()
        entities_text = (directory / "entities.json").read_text()
    # p0 lets c0 GET /api/0/* on s0; the request is permitted in every configuration.
    req = AccessRequest(
        SpiffeId.parse("spiffe://example.org/ns/shop/svc/c0"),
        "GET",
        "s0",
        "127.0.0.1",
        datetime.now(UTC),
        path="/api/0/x",
    )
    assert decide(snapshot, req).allowed
    assert decide(snapshot, req, sliced=False).allowed
    raw = cedar_request(snapshot, req)
    entity_list = [*json.loads(entities_text), workload_entity(req.principal)]

    def text_per_call() -> object:
        # What a caller without handles pays: every input parsed on every decision.
        return cedarpy.is_authorized(raw, policy_text, entity_list, schema_text)

    text_seconds = seconds if count <= 100 else seconds / 2
    return {
        "policies": len(snapshot.policies),
        "slice": len(snapshot.policy_set_for("s0")),
        "narrowed": len(snapshot.narrowed("s0", str(req.principal), req.principal, "GET")[0]),
        "load_ms": round(load_ms, 1),
        "text_us": round(per_call_us(text_per_call, text_seconds), 1),
        "handles_full_us": round(
            per_call_us(lambda: decide(snapshot, req, sliced=False), seconds), 1
        ),
        # A decision Cedar evaluates (the decision cache off): what the target is about.
        "handles_sliced_us": round(
            per_call_us(lambda: decide(snapshot, req, cache=False), seconds), 1
        ),
        # The same request again with the cache on: what a repeated request costs.
        "cached_us": round(per_call_us(lambda: decide(snapshot, req), seconds), 1),
        # The previous path: full context and Cedar's schema validation on every call.
        "sliced_schema_us": round(
            per_call_us(lambda: decide(snapshot, req, check_schema=True), seconds), 1
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    before = baseline(args.seconds)
    rows = [bench(int(n), args.seconds) for n in args.sizes.split(",")]
    after = baseline(args.seconds)
    base = (before["decide_us"] + after["decide_us"]) / 2
    for row in rows:
        row["sliced_vs_baseline"] = round(row["handles_sliced_us"] / base, 2)
    if args.json:
        print(json.dumps({"baseline": [before, after], "rows": rows}, indent=2))
        return 0
    version = importlib.metadata.version("cedarpy")
    print(
        f"cedarpy {version}: CPU µs per decision (median of 5 batches), decision cache off "
        "except the last column; load = parse + validate"
    )
    print(f"load average at the end of the run: {os.getloadavg()[0]:.2f} (figures rise with it)")
    print(
        f"baseline, decide on 1 trivial policy: {before['decide_us']} µs at the start, "
        f"{after['decide_us']} µs at the end (bare cedarpy call under it: "
        f"{before['cedarpy_us']} / {after['cedarpy_us']} µs)"
    )
    print(
        f"{'policies':>8} {'slice':>6} {'narrowed':>8} {'load ms':>8} {'text/call':>10} "
        f"{'full set':>9} {'sliced':>8} {'÷ baseline':>11} {'sliced+schema':>14} {'cached':>7}"
    )
    for row in rows:
        print(
            f"{row['policies']:>8} {row['slice']:>6} {row['narrowed']:>8} {row['load_ms']:>8} "
            f"{row['text_us']:>10} {row['handles_full_us']:>9} {row['handles_sliced_us']:>8} "
            f"{row['sliced_vs_baseline']:>10}x {row['sliced_schema_us']:>14} {row['cached_us']:>7}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
