"""``bench.py reports``: what sidecar reports cost the CA (the pure cores, in-process).

A mesh of `_INSTANCES` sidecars, each reporting 3 edges every 5 s, for 15 minutes of CA
time (the longest window, so the window is full): the CPU per accepted report
(`ReportIntake.accept`: parse, checks, the window), the time to render the mesh JSON
over 1 and 15 minutes (what ``GET /v1/mesh`` runs in a worker thread), and the memory the
full window holds (tracemalloc). Single-threaded and CPU-bound: on the shared 2-core
machine, compare figures of one run only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from mesh_ca.control.mesh_window import MeshWindow
from mesh_ca.control.report_intake import ReportIntake

__all__ = ["bench_reports"]

_INSTANCES: Final = 100
_EDGES: Final = 3
_REPORTS: Final = 180  # 15 minutes at one report every 5 s
_T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
_BOUNDS: Final = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


def _body(instance: int) -> bytes:
    edges = [
        {
            "direction": "inbound",
            "source": f"s{(instance + k + 1) % 20}",
            "destination": f"s{instance % 20}",
            "outcomes": [
                {"status_class": "2xx", "decision": "allow", "count": 50},
                {"status_class": "4xx", "decision": "deny", "count": 2},
            ],
            "latency": {"bounds": _BOUNDS, "counts": [1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 1, 0, 0, 0, 0]},
            "bytes_received": 1000,
            "bytes_sent": 5000,
            "denials": [{"decision": "deny", "policy": "no-delete", "count": 2}],
        }
        for k in range(_EDGES)
    ]
    report = {
        "sent_at": _T0.isoformat(),
        "interval_seconds": 5.0,
        "status": {"instance": f"h:{instance}", "version": "0.1.0", "ready": True},
        "edges": edges,
    }
    return json.dumps(report).encode()


def bench_reports(args: argparse.Namespace) -> dict[str, Any]:
    validity = (_T0 - timedelta(minutes=1), _T0 + timedelta(hours=2))
    intake = ReportIntake(MeshWindow(), rate_per_second=1e9, burst=10**9)
    bodies = [_body(i) for i in range(_INSTANCES)]
    ids = [f"spiffe://example.org/ns/bench/svc/s{i % 20}" for i in range(_INSTANCES)]
    gc.collect()
    tracemalloc.start()
    cpu = time.process_time()
    for round_ in range(_REPORTS):
        now = _T0 + timedelta(seconds=5 * round_)
        for i in range(_INSTANCES):
            intake.accept(ids[i], validity, "127.0.0.1", bodies[i], now, float(round_ * 1000 + i))
    cpu = time.process_time() - cpu
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    now = _T0 + timedelta(seconds=5 * _REPORTS)
    figures: dict[str, Any] = {
        "load_average_before": os.getloadavg()[0],
        "instances": _INSTANCES,
        "edges_per_report": _EDGES,
        "report_bytes": len(bodies[0]),
        "accept_us_per_report": round(cpu / (_INSTANCES * _REPORTS) * 1e6, 1),
        "window_memory_mib": round(held / 2**20, 1),
    }
    for window in ("1m", "15m"):
        gc.collect()
        start = time.process_time()
        view = intake.view(window, now, {})
        figures[f"view_{window}_ms"] = round((time.process_time() - start) * 1000, 1)
        figures[f"view_{window}_bytes"] = len(json.dumps(view))
    return figures
