"""A stock Prometheus (Debian's) scrapes the CA's plain-HTTP admin listener and a
`workers = 2` sidecar's admin listener, loads the shipped alert rules, and its queries
count the requests that were sent. Real processes."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ca_server_process import make_ca, serving_ca_dir
from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import free_port, running_sidecar
from tests.test_workers_share_listeners import _get, _wait

pytestmark = pytest.mark.interop

RULES = Path(__file__).resolve().parents[1] / "docs" / "monitoring" / "meshgate-alerts.yml"
_ADMIN = re.compile(r"mesh-ca admin on (\S+:\d+)")


@contextlib.contextmanager
def _prometheus(tmp: Path, targets: dict[str, str]) -> Iterator[str]:
    tmp.mkdir()
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(binary).exists(), "prometheus missing: scripts/lib/setup.sh installs it"
    shutil.copy(RULES, tmp / RULES.name)
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
        for job, target in targets.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES.name}']\nscrape_configs:\n{jobs}"
    )
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]
    except OSError:
        return None  # not up yet


def _value(base: str, query: str) -> float | None:
    data = _api(base, "query", query=query)
    if not data or not data["result"]:
        return None
    return float(data["result"][0]["value"][1])


def test_prometheus_scrapes_the_ca_and_a_two_worker_sidecar(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    extra = ("--admin-listen", "127.0.0.1:0")
    with (
        serving_ca_dir(
            ca, tmp_path / "ca.log", argv=("-m", "mesh_ca.cli", "serve"), extra=extra
        ) as server,
        http_app() as app,
    ):
        match = _ADMIN.search(server.log())
        assert match, server.log()
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1], workers=2)
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            sent = 30
            for i in range(sent):
                assert _get(pair.a_outbound, f"/items/{i}") == 200
            targets = {
                "mesh-ca": match.group(1),
                "frontend": f"127.0.0.1:{pair.a_admin}",
                "catalog": f"127.0.0.1:{pair.b_admin}",
            }
            with _prometheus(tmp_path / "prom", targets) as prom:
                up = 'sum(up{job=~"mesh-ca|frontend|catalog"})'
                _wait(lambda: _value(prom, up) == 3, timeout=60)
                issued = 'meshgate_ca_issuances_total{kind="ca-server",result="ok"}'
                assert _value(prom, issued) == 1
                outbound = (
                    'sum(meshgate_requests_total{job="frontend",direction="outbound",'
                    'source_service="frontend",destination_service="catalog"})'
                )
                _wait(lambda: _value(prom, outbound) == sent, timeout=30)
                inbound = 'sum(meshgate_requests_total{job="catalog",direction="inbound"})'
                assert _value(prom, inbound) == sent
                groups = _api(prom, "rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                assert len(rules) == 9
                assert all(r["health"] in ("ok", "unknown") for r in rules), rules
                _wait(lambda: all(r["health"] == "ok" for g in _api(prom, "rules")["groups"]
                                  for r in g["rules"]), timeout=30)  # fmt: skip
                firing = {a["labels"]["alertname"] for a in _api(prom, "alerts")["alerts"]}
                assert "MeshgateCaDown" not in firing
