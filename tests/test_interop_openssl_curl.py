"""Real non-meshgate TLS peers: openssl s_client and curl in, openssl s_server out."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from tests.pki import Leaf
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, free_port, running_sidecar, write_config, write_identity

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("openssl") is None or shutil.which("curl") is None,
        reason="needs openssl and curl (scripts/test.sh installs them)",
    ),
]


def _pem_files(leaf: Leaf, directory: Path) -> tuple[Path, Path, Path]:
    """leaf-only cert, key, intermediate: the layout openssl's -cert/-cert_chain want."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, chain = directory / "leaf.pem", directory / "leaf.key", directory / "chain.pem"
    cert.write_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf.key_pem())
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in leaf.chain))
    return cert, key, chain


def _spki_pin(leaf: Leaf) -> str:
    der = leaf.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


class HttpApp(EchoApp):
    """Answers any request with 200 'hello from the app' (for curl)."""

    async def _echo(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            body = b"hello from the app"
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (len(body), body)
            )


def _s_client(port: int, cert: Path, key: Path, chain: Path, bundle: Path) -> str:
    """Send one line with openssl s_client (verifying the server's chain), return the output."""
    with subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_3",
            "-quiet",
            "-no_ign_eof",
            "-verify_return_error",
            "-CAfile",
            str(bundle),
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-cert_chain",
            str(chain),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"ping through the mesh\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # the echo (or EOF when refused)
        proc.stdin.close()
        proc.wait(10)
        return line.decode()


@contextmanager
def _s_server(leaf: Leaf, directory: Path, bundle: Path) -> Iterator[int]:
    cert, key, chain = _pem_files(leaf, directory)
    port = free_port()
    with subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-tls1_3",
            "-rev",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-cert_chain",
            str(chain),
            "-CAfile",
            str(bundle),
            "-Verify",
            "1",
            "-verify_return_error",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 10
            while b"ACCEPT" not in proc.stdout.readline():
                assert time.monotonic() < deadline, "s_server did not start"
                assert proc.poll() is None, "s_server exited"
            yield port
        finally:
            proc.kill()


async def test_openssl_and_curl_with_an_svid_reach_the_app_through_the_inbound_sidecar(
    tmp_path: Path,
) -> None:
    pki = Pki()
    echo, http = EchoApp(), HttpApp()
    client_id = pki.spiffe_id("tools", "openssl")
    client = pki.leaf(client_id)
    server = pki.leaf(pki.spiffe_id("shop", "orders"))
    files = write_identity(pki, server, tmp_path / "b")
    cert, key, chain = _pem_files(client, tmp_path / "client")
    full_chain, _ = client.write(tmp_path / "client", "full")
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.serve)
        await nursery.start(http.serve)
        echo_in, http_in = free_port(), free_port()
        admins = {"echo": free_port(), "http": free_port()}
        configs = {}
        for name, listen, app in (("echo", echo_in, echo.port), ("http", http_in, http.port)):
            configs[name] = write_config(
                tmp_path / f"{name}.toml",
                {
                    "identity": {"spiffe_id": str(pki.spiffe_id("shop", "orders")), **files},
                    "inbound": {
                        "listen": f"127.0.0.1:{listen}",
                        "app": f"127.0.0.1:{app}",
                        "service": "orders",
                        "allowed_ids": [str(client_id)],
                    },
                    "admin": {"listen": f"127.0.0.1:{admins[name]}"},
                },
            )
        bundle = Path(files["bundle_file"])
        with running_sidecar(configs["echo"], admins["echo"]):
            out = await trio.to_thread.run_sync(_s_client, echo_in, cert, key, chain, bundle)
            assert out == "ping through the mesh\n"
        with running_sidecar(configs["http"], admins["http"]):
            # curl cannot check a URI SAN, so it pins the sidecar's SVID key instead of a
            # hostname; the sidecar still requires and verifies curl's client SVID.
            result = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "--tlsv1.3",
                    "--cert",
                    str(full_chain),
                    "--key",
                    str(key),
                    "--cacert",
                    str(bundle),
                    "-k",
                    "--pinnedpubkey",
                    _spki_pin(server),
                    f"https://127.0.0.1:{http_in}/",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"hello from the app"
            no_cert = await trio.run_process(
                ["curl", "-sS", "--tlsv1.3", "-k", f"https://127.0.0.1:{http_in}/"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert no_cert.returncode != 0
            assert no_cert.stdout == b""
        assert http.connections == 1
        nursery.cancel_scope.cancel()


async def test_outbound_sidecar_reaches_openssl_s_server_only_with_the_configured_id(
    tmp_path: Path,
) -> None:
    pki = Pki()
    upstream = pki.leaf(pki.spiffe_id("ext", "s-server"))
    me = pki.spiffe_id("shop", "frontend")
    files = write_identity(pki, pki.leaf(me), tmp_path / "a")
    bundle = Path(files["bundle_file"])
    with _s_server(upstream, tmp_path / "upstream", bundle) as server_port:
        admin, good, wrong = free_port(), free_port(), free_port()
        config = write_config(
            tmp_path / "a.toml",
            {
                "identity": {"spiffe_id": str(me), **files},
                "outbound": [
                    {
                        "listen": f"127.0.0.1:{good}",
                        "service": "ext",
                        "endpoints": [f"127.0.0.1:{server_port}"],
                        "spiffe_ids": [str(pki.spiffe_id("ext", "s-server"))],
                    },
                    {
                        "listen": f"127.0.0.1:{wrong}",
                        "service": "ext-wrong",
                        "endpoints": [f"127.0.0.1:{server_port}"],
                        "spiffe_ids": [str(pki.spiffe_id("ext", "someone-else"))],
                    },
                ],
                "admin": {"listen": f"127.0.0.1:{admin}"},
            },
        )
        with running_sidecar(config, admin) as sidecar:
            for port, expected in ((good, b"hsem eht hguorht olleh"), (wrong, b"")):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                received = b""
                with trio.fail_after(10):
                    try:
                        await stream.send_all(b"hello through the mesh\n")
                        while expected not in received or not expected:
                            data = await stream.receive_some()
                            if not data:
                                break
                            received += data
                    except trio.BrokenResourceError:
                        pass  # reset: refused
                await trio.aclose_forcefully(stream)
                assert expected in received if expected else received == b""
            assert '"reason":"identity_mismatch"' in sidecar.log()
