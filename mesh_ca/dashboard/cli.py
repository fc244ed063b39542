"""`mesh-ca dashboard`: its flags and its process (the page itself is in assets/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mesh_ca.config import parse_admin_listen, parse_listen
from mesh_ca.mesh_cli import admin_address
from meshgate.exit_codes import ExitCode, StartupError

if TYPE_CHECKING:
    from mesh_ca.dashboard.server import MeshFetcher

__all__ = ["add_dashboard_parser", "dashboard_main"]

DEFAULT_LISTEN = "127.0.0.1:9471"


def add_dashboard_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the page is served (default {DEFAULT_LISTEN}; loopback only unless "
        "--allow-remote: the dashboard has no login, reach it remotely through an SSH tunnel)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --listen bind a non-loopback address (no TLS, no authentication)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="the CA's plain-HTTP admin listener (`mesh-ca serve --admin-listen`; default "
        "$MESH_CA_ADMIN, else server.admin_listen of --dir)",
    )
    source.add_argument(
        "--dir", type=Path, help="a CA directory whose ca.toml sets server.admin_listen"
    )


def _admin_address(args: argparse.Namespace) -> tuple[str, int]:
    text = admin_address(args)  # as `mesh-ca mesh` finds it
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise StartupError("--admin", text, str(exc), ExitCode.USAGE) from None


def dashboard_main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM."""
    try:
        host, port = parse_admin_listen(args.listen, allow_remote=args.allow_remote)
    except ValueError as exc:
        raise StartupError("--listen", args.listen, str(exc), ExitCode.USAGE) from None
    admin_host, admin_port = _admin_address(args)
    import trio  # the server's imports only when serving: `mesh-ca --help` stays quick

    from mesh_ca.dashboard.server import MeshFetcher

    try:
        trio.run(_run, host, port, MeshFetcher(admin_host, admin_port))
    except KeyboardInterrupt:
        return 0
    return 0


async def _run(host: str, port: int, fetcher: MeshFetcher) -> None:
    import trio

    from mesh_ca.dashboard.pages import allowed_hosts
    from mesh_ca.dashboard.server import serve_dashboard

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        problem = f"cannot listen: {exc.strerror or exc}"
        raise StartupError("--listen", f"{host}:{port}", problem, ExitCode.LISTEN) from exc
    bound = listeners[0].socket.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_dashboard, listeners, fetcher, allowed_hosts(host, bound))
        sys.stdout.write(
            f"mesh-ca dashboard on http://{shown}:{bound}/ "
            f"(reading the CA admin listener at {fetcher.host}:{fetcher.port})\n"
        )
        sys.stdout.flush()
        with trio.open_signal_receiver(15) as signals:  # SIGTERM: stop like Ctrl-C
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return
