"""``mesh-ca endpoints list`` and ``mesh-ca policy status``: the control plane's state, read
from the CA's store (any replica's writes), in text or JSON (``--output json``).

``policy status`` also validates the control plane's policy directory as it is now, so an
edit that `mesh-ca serve` refused shows here with its problems, next to the version that
stays published.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mesh_ca.config import CONFIG_FILE, CaConfig, load_config
from mesh_ca.control.policy_set import PolicySetError, load_policy_set, read_policy_files
from mesh_ca.control.registry import endpoints_report, policy_status, status_document
from mesh_ca.store import StoreError, open_store
from mesh_ca.store.control import control_store

__all__ = ["add_control_parsers", "endpoints_main", "policy_main"]


def add_control_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``endpoints`` and ``policy`` to the ``mesh-ca`` subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, required=True, help="the CA directory")
        p.add_argument("--output", choices=["text", "json"], default="text")

    text = "The control plane's registered endpoints (discovery)."
    p = sub.add_parser("endpoints", help=text, description=text)
    actions = p.add_subparsers(dest="endpoints_command", metavar="ACTION", required=True)
    text = "List registered endpoints, by service."
    e = actions.add_parser("list", help=text, description=text)
    common(e)
    e.add_argument("--service", help="only this service")

    text = "The control plane's central policies."
    p = sub.add_parser("policy", help=text, description=text)
    actions = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    text = (
        "The published policy version, whether the policy directory is valid now, and which "
        "version each sidecar enforces (stale: behind, or not heard from for 90 s)."
    )
    s = actions.add_parser("status", help=text, description=text)
    common(s)


def _config(directory: Path) -> CaConfig:
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise StoreError(f"{directory}: not a CA directory (no {CONFIG_FILE}); run init")
    return load_config(file)


def endpoints_main(args: argparse.Namespace) -> int:
    config = _config(args.dir)
    store = open_store(config, args.dir)
    try:
        services = control_store(store).all_endpoints(datetime.now(UTC))
    finally:
        store.close()
    rows = endpoints_report(services, args.service)
    if args.output == "json":
        sys.stdout.write(json.dumps({"endpoints": rows}, indent=2) + "\n")
        return 0
    if not rows:
        sys.stdout.write("no registered endpoints\n")
    for service in sorted({str(r["service"]) for r in rows}):
        mine = [r for r in rows if r["service"] == service]
        sys.stdout.write(f"{service}  (version {mine[0]['version']})\n")
        for r in mine:
            sys.stdout.write(
                f"  {r['address']:<24} {r['protocol']:<5} {r['spiffe_id']}  "
                f"expires {r['expires_at']}\n"
            )
    return 0


def policy_main(args: argparse.Namespace) -> int:
    config = _config(args.dir)
    store = open_store(config, args.dir)
    now = datetime.now(UTC)
    try:
        control = control_store(store)
        latest = control.latest_policy()
        rows = control.enforcement()
    finally:
        store.close()
    version = latest.version if latest else 0
    directory_state = _directory_state(args.dir, config, latest.sha256 if latest else None)
    document: dict[str, Any] = status_document(
        version,
        latest.sha256 if latest else None,
        latest.published_at if latest else None,
        directory_state.get("problems") and "; ".join(directory_state["problems"]),
        policy_status(rows, version, now),
    )
    document["directory"] = directory_state
    if args.output == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    published = document["published"]
    if latest is None:
        sys.stdout.write("published   none yet\n")
    else:
        sys.stdout.write(
            f"published   version {version}  sha256 {published['sha256'][:16]}  "
            f"at {published['published_at']}\n"
        )
    sys.stdout.write(f"directory   {directory_state['path']}: {directory_state['state']}\n")
    for problem in directory_state.get("problems", []):
        sys.stdout.write(f"  {problem}\n")
    sidecars = document["sidecars"]
    stale = sum(1 for s in sidecars if s["stale"])
    sys.stdout.write(f"sidecars    {len(sidecars)} ({stale} stale)\n")
    for s in sidecars:
        sys.stdout.write(
            f"  {s['service']:<16} {s['spiffe_id']}  enforces {s['enforced_version']}  "
            f"{s['state']}  seen {s['seen_at']}\n"
        )
    return 0


def _directory_state(directory: Path, config: CaConfig, published: str | None) -> dict[str, Any]:
    if config.control.policy_dir is None:
        return {"path": None, "state": "not configured ([control] policy_dir)"}
    path = Path(config.control.policy_dir)
    path = path if path.is_absolute() else directory / path
    try:
        loaded = load_policy_set(read_policy_files(path))
    except PolicySetError as exc:
        return {
            "path": str(path),
            "state": "refused: the published version stays in force",
            "problems": list(exc.problems),
        }
    if loaded.sha256 == published:
        return {"path": str(path), "state": "valid, published"}
    return {"path": str(path), "state": "valid, not yet published (mesh-ca serve publishes it)"}
