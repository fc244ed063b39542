"""Every start-up failure of ``mesh-sidecar run`` and ``mesh-ca serve`` is one line on stderr
naming the config key (or flag) and its value, with the exit code of its cause
(`meshgate.exit_codes`): never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.exit_codes import ExitCode
from tests.integration.ca_mesh import init_ca
from tests.pki import TestPki as Pki
from tests.procs import ROOT, free_port, write_config, write_identity

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (no SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _sidecar(
    tmp: Path, *, static: bool = True, workers: int = 1, ports: dict[str, int] | None = None
) -> Path:
    ports = ports or {}
    pki = Pki()
    orders = pki.spiffe_id("shop", "orders")
    identity: dict[str, Any] = {"spiffe_id": str(orders)}
    if static:
        identity |= write_identity(pki, pki.leaf(orders), tmp / "id")
    else:
        (tmp / "bundle.pem").write_bytes(pki.bundle_pem())
        identity |= {
            "bundle_file": str(tmp / "bundle.pem"),
            "ca_addresses": ["127.0.0.1:1"],
            "state_dir": str(tmp / "state"),
        }
    config = {
        "workers": workers,
        "identity": identity,
        "inbound": {
            "listen": f"127.0.0.1:{ports.get('inbound') or free_port()}",
            "app": "127.0.0.1:1",
            "service": "orders",
            "allowed_ids": [str(pki.spiffe_id("shop", "web"))],
        },
        "admin": {"listen": f"127.0.0.1:{ports.get('admin') or free_port()}"},
    }
    return write_config(tmp / "sidecar.toml", config)


def _one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.mark.parametrize("key", ["inbound", "admin"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_sidecar_port_in_use(tmp_path: Path, taken_port: int, key: str, workers: int) -> None:
    config = _sidecar(tmp_path, workers=workers, ports={key: taken_port})
    done = _run("sidecar.cli", "run", "--config", str(config))
    _one_line(done, ExitCode.LISTEN, f"{key}.listen = '127.0.0.1:{taken_port}'", "in use")


def test_a_sidecar_state_dir_that_is_a_file(tmp_path: Path) -> None:
    config = _sidecar(tmp_path, static=False)
    (tmp_path / "state").write_text("not a directory")
    done = _run("sidecar.cli", "run", "--config", str(config))
    _one_line(done, ExitCode.STATE, f"identity.state_dir = '{tmp_path / 'state'}'")


def test_a_sidecar_bundle_file_that_is_missing(tmp_path: Path) -> None:
    config = _sidecar(tmp_path, static=False)
    (tmp_path / "bundle.pem").unlink()
    done = _run("sidecar.cli", "run", "--config", str(config))
    _one_line(done, ExitCode.FILE, f"identity.bundle_file = '{tmp_path / 'bundle.pem'}'")


def test_mesh_ca_serve_on_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    ca = init_ca(tmp_path / "ca")
    address = f"127.0.0.1:{taken_port}"
    done = _run("mesh_ca.cli", "serve", "--dir", str(ca.path), "--listen", address)
    _one_line(done, ExitCode.LISTEN, f"--listen = '{address}'", "in use")


def test_mesh_ca_serve_without_a_ca_directory(tmp_path: Path) -> None:
    done = _run("mesh_ca.cli", "serve", "--dir", str(tmp_path / "nothing"))
    _one_line(done, ExitCode.FILE, f"--dir {tmp_path / 'nothing'}")


def test_the_exit_codes_are_in_help() -> None:
    for argv in (("sidecar.cli", "run", "--help"), ("mesh_ca.cli", "serve", "--help")):
        done = _run(*argv)
        assert done.returncode == 0
        assert "5 a listen address cannot be bound" in " ".join(done.stdout.split())


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_refuses_what_run_refuses_a_key_of_another_certificate(
    tmp_path: Path, command: str
) -> None:
    config = _sidecar(tmp_path)
    other = Pki()  # a key that does not match svid.pem
    (tmp_path / "id" / "svid.key").write_bytes(
        other.leaf(other.spiffe_id("shop", "orders")).key_pem()
    )
    argv = [command, str(config)] if command == "check-config" else ["run", "--config", str(config)]
    done = _run("sidecar.cli", *argv)
    _one_line(done, ExitCode.FILE, "identity.key_file = ", "private key does not match")
