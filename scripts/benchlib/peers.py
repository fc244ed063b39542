"""nginx and haproxy as reference mTLS hop pairs, configured for a fair comparison.

Each pair is the same shape as a meshgate pair: client-side proxy (plain HTTP in, mTLS out
presenting an SVID), server-side proxy (mTLS in, client certificate required, plain HTTP
to the app). Best settings for both: TLS 1.3 only, keep-alive to the upstream, no session
resumption (tickets and cache off), one worker process each, as the meshgate sidecars.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PeerPair", "Tls", "haproxy_pair", "nginx_app", "nginx_pair", "wait_port"]


@dataclass(frozen=True)
class Tls:
    """File paths of one SVID: chain (leaf first), key, and the trust bundle."""

    chain: Path
    key: Path
    bundle: Path


@dataclass
class PeerPair:
    name: str
    entry_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise FileNotFoundError("nginx is not installed (scripts/bench.py installs it)")
    return path


def _nginx_main(workdir: Path, body: str, access_log: bool = False) -> str:
    modules = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    load = f"load_module {modules};\n" if modules.exists() else ""
    return f"""{load}daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {f"{workdir}/access.log" if access_log else "off"};
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
{body}
}}
"""


def _start_nginx(workdir: Path, body: str, access_log: bool = False) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(_nginx_main(workdir, body, access_log))
    return subprocess.Popen(
        [_nginx_binary(), "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def nginx_app(workdir: Path, port: int, body_bytes: int = 64) -> PeerPair:
    """A fast HTTP app (fixed small response) so the proxies, not the app, are measured."""
    payload = "x" * body_bytes
    body = f"""    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ return 200 "{payload}"; }}
    }}"""
    pair = PeerPair("app", port, [_start_nginx(workdir / "app", body)])
    wait_port(port)
    return pair


def nginx_pair(
    workdir: Path,
    entry_port: int,
    hop_port: int,
    app_port: int,
    client: Tls,
    server: Tls,
    access_log: bool = False,
) -> PeerPair:
    """`access_log`: nginx's default, one line a request to a file (unbuffered), per proxy."""
    server_body = f"""    upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{hop_port} ssl;
        ssl_certificate {server.chain};
        ssl_certificate_key {server.key};
        ssl_client_certificate {server.bundle};
        ssl_verify_client on;
        ssl_verify_depth 3;
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-forwarded-client-cert "URI=$ssl_client_s_dn";
            proxy_pass http://app;
        }}
    }}"""
    client_body = f"""    upstream hop {{ server 127.0.0.1:{hop_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{entry_port};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {client.chain};
            proxy_ssl_certificate_key {client.key};
            proxy_ssl_trusted_certificate {client.bundle};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 3;
            proxy_ssl_name localhost;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse off;
            proxy_pass https://hop;
        }}
    }}"""
    pair = PeerPair("nginx", entry_port)
    for name, body in (("nginx-server", server_body), ("nginx-client", client_body)):
        pair.processes.append(_start_nginx(workdir / name, body, access_log))
    wait_port(hop_port)
    wait_port(entry_port)
    return pair


def _combined_pem(tls: Tls, path: Path) -> Path:
    path.write_bytes(tls.chain.read_bytes() + tls.key.read_bytes())
    path.chmod(0o600)
    return path


def haproxy_pair(
    workdir: Path, entry_port: int, hop_port: int, app_port: int, client: Tls, server: Tls
) -> PeerPair:
    workdir.mkdir(parents=True, exist_ok=True)
    server_pem = _combined_pem(server, workdir / "server.pem")
    client_pem = _combined_pem(client, workdir / "client.pem")
    head = """global
    nbthread 1
    maxconn 8192
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
    ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
"""
    # Two processes, one per hop, like the meshgate and nginx pairs. No verifyhost: the
    # chain is verified against the bundle; SVIDs carry no DNS name.
    server_conf = f"""{head}frontend hop_in
    bind 127.0.0.1:{hop_port} ssl crt {server_pem} ca-file {server.bundle} verify required
    default_backend app
backend app
    server app 127.0.0.1:{app_port}
"""
    client_conf = f"""{head}frontend entry
    bind 127.0.0.1:{entry_port}
    default_backend hop
backend hop
    server hop 127.0.0.1:{hop_port} ssl crt {client_pem} ca-file {client.bundle} \
verify required no-ssl-reuse
"""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    procs = []
    for name, text in (("server", server_conf), ("client", client_conf)):
        conf = workdir / f"haproxy-{name}.cfg"
        conf.write_text(text)
        procs.append(
            subprocess.Popen(
                [binary, "-f", str(conf), "-db"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    pair = PeerPair("haproxy", entry_port, procs)
    wait_port(hop_port)
    wait_port(entry_port)
    return pair
