"""``[connection_lifetime] mode = "strict"`` (the default) cuts a tcp stream at SVID expiry.

The counterpart of the soak test, where the same 45 s download through web → files in
``until_revoked`` mode completes byte-exact across rotations: here both sidecars keep the
strict lifetime, so the download is cut when the first SVID of its handshake expires
(30 s SVIDs: at most 30 s in), and both access logs say why (``svid_expired``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.benchlib.soak import SoakSettings, access_lines, run_soak

pytestmark = pytest.mark.integration


def test_the_download_is_cut_and_logged_as_svid_expired(tmp_path: Path) -> None:
    settings = SoakSettings(
        workdir=tmp_path,
        minutes=0,
        max_minutes=1.5,
        rate=2,
        keepalive_clients=1,
        stream_every=None,
        download_seconds=45,
        download_bytes=1024 * 1024,
        downloads=1,
        downloads_each=1,
        download_lifetime="strict",
        retire_margin_seconds=5,
    )
    figures = run_soak(settings, progress=lambda _: None)
    failures = figures["failures"]
    assert sum(failures.values()) == 1, figures["failure_examples"]
    assert set(failures) <= {"download_cut", "download_reset"}, failures
    assert "download" not in figures["requests_ok"]
    for name, direction in (("files", "inbound"), ("web", "outbound")):
        tcp = [
            line
            for line in access_lines(tmp_path / f"{name}.access.log")
            if line.get("protocol") == "tcp" and line.get("direction") == direction
        ]
        assert [line["reason"] for line in tcp] == ["svid_expired"], (name, tcp)
