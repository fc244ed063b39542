"""workers = 2: both processes accept on the shared port (SO_REUSEPORT) with one identity,
a killed worker is replaced, and SIGTERM drains every worker and exits 0. Real processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _records(sidecar: Sidecar, msg: str) -> list[dict[str, object]]:
    out = []
    for line in sidecar.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == msg:
            out.append(record)
    return out


def _worker_pids(sidecar: Sidecar) -> list[int]:
    """PIDs of the workers started so far, from the parent's log."""
    return [int(str(r["pid"])) for r in _records(sidecar, "worker started")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _holds_connection_to(pid: int, port: int) -> bool:
    """Whether `pid` has an established TCP connection to 127.0.0.1:`port` (its pool)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01" and fields[9] in inodes:
            return True
    return False


def _wait(predicate: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(str(predicate))
        time.sleep(0.05)


def test_two_workers_serve_are_replaced_and_drain(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1], workers=2)
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            first = _worker_pids(a)
            assert len(first) == 2
            for i in range(40):  # one connection each: the kernel spreads them
                assert _get(pair.a_outbound, f"/items/{i}") == 200
            # Each worker that served keeps a pooled mTLS connection to B.
            assert all(_holds_connection_to(pid, pair.b_inbound) for pid in first)
            status, cert = a.get("/certificate")
            assert status == 200
            assert cert["spiffe_id"] == str(pair.a_id)

            os.kill(first[0], signal.SIGKILL)
            _wait(lambda: len(_worker_pids(a)) == 3)
            replacement = _worker_pids(a)[2]
            assert "worker exited; restarting" in a.log()
            _wait(lambda: len(_records(a, "sidecar started")) == 3)  # replacement is bound
            assert _alive(replacement)
            for i in range(10):
                assert _get(pair.a_outbound, f"/again/{i}") == 200

            assert a.stop(signal.SIGTERM) == 0
            assert not any(_alive(pid) for pid in (first[1], replacement))
            assert "sidecar stopped" in a.log()
