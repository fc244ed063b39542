"""``mesh-ca mesh stat|edges|top`` and ``mesh-ca check``: the mesh as the CA sees it.

Each reads ``GET /v1/mesh?window=W`` from the CA's plain-HTTP loopback admin listener
(``--admin HOST:PORT``, else ``$MESH_CA_ADMIN``, else ``server.admin_listen`` of the CA
directory given with ``--dir``) and prints a table, or the JSON itself with ``--output
json``. With CA replicas, each replica knows the sidecars connected to it: ask each.

Exit codes: 0; 1 the admin listener could not be read (``mesh``), or a check failed
(``check``); 2 a usage error naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from mesh_ca.config import ConfigError, load_config
from mesh_ca.control.mesh_window import WINDOWS
from mesh_ca.duration import parse_duration
from mesh_ca.mesh_check import Check, Thresholds, run_checks
from meshgate.errors import MeshgateError

__all__ = ["add_mesh_parsers", "check_main", "mesh_main"]

_ADMIN_ENV: Final = "MESH_CA_ADMIN"
_TIMEOUT_SECONDS: Final = 5.0
_DEFAULTS: Final = Thresholds()


class MeshCliError(MeshgateError):
    """Why the command could not run; `code` is its exit code (1, or 2 for usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _common(p: argparse.ArgumentParser, *, window: bool = True) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help=f"the CA's admin listener (default ${_ADMIN_ENV}, else server.admin_listen of --dir)",
    )
    where.add_argument("--dir", type=Path, help="a CA directory whose ca.toml names admin_listen")
    if window:
        p.add_argument(
            "--window", choices=list(WINDOWS), default="1m", help="rolling window (default 1m)"
        )
    p.add_argument("--output", choices=["table", "json"], default="table")


def add_mesh_parsers(sub: Any) -> None:
    """Add ``mesh`` and ``check`` to the ``mesh-ca`` subcommands."""
    mesh = sub.add_parser(
        "mesh",
        help="Services, edges and the busiest edges, as the sidecars report them.",
        description="Services, edges and the busiest edges, as the sidecars report them to "
        "this CA (per-edge deltas every few seconds; see docs/monitoring.md).",
    )
    views = mesh.add_subparsers(dest="mesh_command", metavar="VIEW", required=True)
    p = views.add_parser(
        "stat", help="per service: health, instances, success rate, req/s, latency"
    )
    _common(p)
    p = views.add_parser("edges", help="per edge (source → destination): the same numbers")
    _common(p)
    p = views.add_parser("top", help="the busiest edges now")
    _common(p)
    p.add_argument("--limit", type=int, default=10, help="edges shown (default 10)")
    check = sub.add_parser(
        "check",
        help="Doctor: CA, certificates, sidecars, SVIDs, policies, versions, clocks.",
        description="Check the CA and every reporting sidecar; each check prints ✔ or ✘ "
        "with a hint. Exits 1 when any check fails.",
    )
    _common(check, window=False)
    check.add_argument(
        "--ca-expiry-warn",
        type=_duration,
        default=_DEFAULTS.ca_expiry_warn,
        metavar="DURATION",
        help="fail when the root or intermediate expires sooner (default 30d)",
    )
    check.add_argument(
        "--svid-warn",
        type=_duration,
        metavar="DURATION",
        help="fail when an SVID expires sooner (default: a quarter of its lifetime)",
    )
    check.add_argument(
        "--max-clock-skew",
        type=_duration,
        default=_DEFAULTS.max_clock_skew,
        metavar="DURATION",
        help="fail when a sidecar's clock is further off the CA's (default 5s)",
    )


def admin_address(args: argparse.Namespace) -> str:
    if args.admin:
        return str(args.admin)
    if args.dir is None and os.environ.get(_ADMIN_ENV):
        return os.environ[_ADMIN_ENV]
    if args.dir is not None:
        try:
            listen = load_config(args.dir / "ca.toml").server.admin_listen
        except ConfigError as exc:
            raise MeshCliError(f"--dir {args.dir}: {exc}") from exc
        if not listen:
            raise MeshCliError(
                f"--dir {args.dir}: server.admin_listen is not set; serve with "
                "--admin-listen HOST:PORT and pass it as --admin",
                2,
            )
        return listen
    raise MeshCliError(
        f"--admin: which CA? give --admin HOST:PORT, ${_ADMIN_ENV}, or --dir of the CA", 2
    )


def fetch_view(admin: str, window: str) -> dict[str, Any]:
    """The CA's mesh JSON; `MeshCliError` saying why it could not be read."""
    url = f"http://{admin}/v1/mesh?window={window}"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:
            view = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise MeshCliError(f"{url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MeshCliError(f"{url}: {reason}") from exc
    if not isinstance(view, dict) or "edges" not in view:
        raise MeshCliError(f"{url}: not a mesh view (is this a meshgate CA admin listener?)")
    return view


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _numbers(stats: Mapping[str, Any]) -> list[str]:
    latency = stats["latency_ms"]
    return [
        str(stats["requests"]),
        _pct(stats["success_rate"]),
        f"{stats['rps']:g}",
        _ms(latency["p50"]),
        _ms(latency["p95"]),
        _ms(latency["p99"]),
        str(stats["denials"]),
        str(stats["mtls_failures"]),
    ]


_NUMBERS: Final = [
    "REQUESTS",
    "SUCCESS",
    "RPS",
    "P50_MS",
    "P95_MS",
    "P99_MS",
    "DENIED",
    "MTLS_FAIL",
]


def _stat(view: Mapping[str, Any], out: TextIO) -> None:
    rows = [["SERVICE", "HEALTH", "READY", *_NUMBERS]]
    for svc in view["services"]:
        members = svc["instances"]
        ready = sum(1 for m in members if m["ready"] and not m["stale"])
        rows.append(
            [svc["name"], svc["health"], f"{ready}/{len(members)}", *_numbers(svc["inbound"])]
        )
    _table(rows, out)


def _edges(edges: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    rows = [["SOURCE", "DESTINATION", "SEEN_BY", *_NUMBERS]]
    rows += [[e["source"], e["destination"], e["measured_by"], *_numbers(e)] for e in edges]
    _table(rows, out)


def _header(view: Mapping[str, Any], admin: str, out: TextIO) -> None:
    out.write(
        f"# window {view['window']} (rates over {view['rate_seconds']:g}s), CA "
        f"{view['ca'].get('trust_domain')} at {admin}, {view['generated_at']}\n"
    )


def mesh_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    admin = admin_address(args)
    view = fetch_view(admin, args.window)
    command: str = args.mesh_command
    if command == "stat":
        shown: Any = {k: view[k] for k in ("schema", "generated_at", "window", "services")}
    elif command == "edges":
        shown = {k: view[k] for k in ("schema", "generated_at", "window", "edges")}
    else:
        if args.limit < 1:
            raise MeshCliError("--limit: must be at least 1", 2)
        busiest = sorted(view["edges"], key=lambda e: (-e["rps"], e["source"], e["destination"]))
        shown = {
            "schema": view["schema"],
            "generated_at": view["generated_at"],
            "window": view["window"],
            "edges": busiest[: args.limit],
        }
    if args.output == "json":
        out.write(json.dumps(shown, indent=2) + "\n")
        return 0
    _header(view, admin, out)
    if command == "stat":
        if not view["services"]:
            out.write("no service has reported yet\n")
            return 0
        _stat(view, out)
    elif not shown["edges"]:
        out.write("no traffic in this window\n")
    else:
        _edges(shown["edges"], out)
    return 0


def check_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    admin = admin_address(args)
    view: dict[str, Any] | None
    try:
        view, why = fetch_view(admin, "1m"), None
    except MeshCliError as exc:
        view, why = None, str(exc)
    limits = Thresholds(args.ca_expiry_warn, args.svid_warn, args.max_clock_skew)
    registrations = _registrations(admin) if view is not None else None
    central = _control_json(admin, "/control/policy") if view is not None else None
    checks = run_checks(view, why, admin, limits, registrations, central)
    ok = all(c.ok for c in checks)
    if args.output == "json":
        document = {"ok": ok, "admin": admin, "checks": [c.as_json() for c in checks]}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        _print_checks(checks, out)
        out.write("\nall checks passed\n" if ok else "\nsome checks failed\n")
    return 0 if ok else 1


def _control_json(admin: str, path: str) -> dict[str, Any] | None:
    """A control-plane view of the admin listener (``/control/...``), or None when this
    admin listener does not serve it."""
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=_TIMEOUT_SECONDS) as response:
            document = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _registrations(admin: str) -> list[dict[str, Any]] | None:
    """The control plane's registered endpoints (``/control/endpoints``), or None when this
    admin listener does not serve them."""
    document = _control_json(admin, "/control/endpoints")
    rows = document.get("endpoints") if document is not None else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else None


def _print_checks(checks: Sequence[Check], out: TextIO) -> None:
    for check in checks:
        out.write(f"{'✔' if check.ok else '✘'} {check.name}: {check.message}\n")
        for line in check.details:
            out.write(f"    {line}\n")
        if not check.ok and check.hint:
            out.write(f"    hint: {check.hint}\n")


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`command` with `MeshCliError` printed as one line and turned into its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except MeshCliError as exc:
            sys.stderr.write(f"mesh-ca: error: {exc}\n")
            return exc.code

    return run
