"""A short soak: the three-service chain keeps every request across rotations and logs each.

`scripts/bench.py soak` in small: a real `mesh-ca serve` with 30 s SVIDs (the CA's floor;
renewed every 16-24 s), sidecars web → orders → payments in http mode plus web → files in
tcp mode (``until_revoked`` lifetime), policy files rewritten every 2 s, keep-alive and
new-connection clients, 3 s streamed responses and one 45 s download. It runs until every
sidecar has rotated three times and asserts: no failed request of any kind, the download
byte-exact across rotations of both its sidecars, and exactly one access-log line per
request at each of the six hops, none of them with a failure status or reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.benchlib.soak import SoakSettings, run_soak

pytestmark = pytest.mark.integration


def test_no_request_fails_and_every_hop_logs_each_request_once(tmp_path: Path) -> None:
    settings = SoakSettings(
        workdir=tmp_path,
        minutes=0,
        min_rotations=3,
        max_minutes=3,
        rate=20,
        keepalive_clients=3,
        stream_seconds=3,
        stream_every=1,
        download_seconds=45,
        download_bytes=2 * 1024 * 1024,
        downloads=1,
        downloads_each=1,
        policy_every=2,
        retire_margin_seconds=5,
    )
    figures = run_soak(settings, progress=lambda _: None)
    assert figures["failures"] == {}, figures["failure_examples"]
    assert all(n >= 3 for n in figures["rotations"].values()), figures["rotations"]
    ok = figures["requests_ok"]
    assert ok["download"] == 1
    assert ok["stream"] >= 10  # how many depends on the machine's pace, not on correctness
    assert ok["keepalive"] >= 200
    assert ok["new_connection"] >= 50
    for hop, row in figures["accounting"].items():
        assert row["log_lines"] == row["requests"], (hop, row)
        assert row["not_ok"] == {}, (hop, row)
