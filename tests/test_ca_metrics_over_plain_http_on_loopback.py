"""A stock Prometheus can scrape the CA: `mesh-ca serve` with an admin listener serves
/metrics and /healthz over plain HTTP on loopback, and refuses a non-loopback address
unless told to. Real processes."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from mesh_ca.config import ServerConfig
from tests.ca_server_process import make_ca, serving_ca_dir

pytestmark = pytest.mark.integration

_ADMIN = re.compile(r"mesh-ca admin on (\S+):(\d+)")
_SERVE = ("-m", "mesh_ca.cli", "serve")


def _get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.headers["content-type"], bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], bytes(exc.read())


def test_the_ca_serves_metrics_over_plain_http_on_its_loopback_admin_listener(
    tmp_path: Path,
) -> None:
    ca = make_ca(tmp_path / "ca", admin_listen="127.0.0.1:0")  # the ca.toml key
    with serving_ca_dir(ca, tmp_path / "server.log", argv=_SERVE) as server:
        match = _ADMIN.search(server.log())
        assert match, server.log()
        base = f"http://{match.group(1)}:{match.group(2)}"
        assert match.group(1) == "127.0.0.1"

        status, content_type, body = _get(f"{base}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        issued = ("meshgate_ca_issuances_total", (("kind", "ca-server"), ("result", "ok")))
        assert samples[issued] == 1  # the server's own SVID
        expiry = "meshgate_ca_certificate_expiry_timestamp_seconds"
        assert samples[(expiry, (("certificate", "root"),))] > 0

        assert _get(f"{base}/healthz")[::2] == (200, b'{"status":"ok"}')
        assert _get(f"{base}/metrics", method="POST")[0] == 405
        assert _get(f"{base}/v1/bundle")[0] == 404  # the API stays on its mTLS port


def test_a_non_loopback_admin_address_is_refused_naming_the_flag(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    result = subprocess.run(
        [sys.executable, *_SERVE, "--dir", str(ca.path), "--listen", "127.0.0.1:0",
         "--admin-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--admin-listen" in result.stderr
    assert "not a loopback address" in result.stderr


def test_the_config_key_is_loopback_only_unless_allowed() -> None:
    with pytest.raises(ValidationError, match="admin_listen"):
        ServerConfig(admin_listen="0.0.0.0:9100")
    with pytest.raises(ValidationError, match="admin_listen"):
        ServerConfig(admin_listen="ca.example.org:9100")
    assert ServerConfig(admin_listen="[::1]:9100").admin_listen == "[::1]:9100"
    allowed = ServerConfig(admin_listen="0.0.0.0:9100", admin_allow_remote=True)
    assert allowed.admin_allow_remote
