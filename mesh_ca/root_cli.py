"""``mesh-ca root``: operator-driven root rotation, and the slots shown by ``mesh-ca status``.

``root prepare`` makes a new root (key 0600 in ``roots/``) and an intermediate under it and
publishes both next to the current ones; ``root activate`` switches signing to the new
root's intermediate, refused until every active sidecar reported holding the trust
material of the prepare step (``--force`` overrides, and says so in the audit log);
``root retire`` stops publishing the old root, refused while an unexpired leaf chains to
it; ``root undo`` reverts the last prepare or activate. ``root log`` prints the audit log.
Each step is one compare-and-set of the trust state in the store, with its audit row;
running CA replicas apply it at their next check (``rotation.check_interval_seconds``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mesh_ca.ca_dir import LoadedCa, load_ca_dir, read_passphrase
from mesh_ca.config import CaConfig
from mesh_ca.rotation import RotationError, SlotState, TrustState, schedule
from mesh_ca.rotation.keeper import (
    ROOTS_DIR,
    Loaded,
    load_state,
    new_intermediate,
    new_root_files,
    save,
)
from mesh_ca.rotation.roots import (
    laggards,
    root_activated,
    root_prepared,
    root_retired,
    root_undone,
)
from mesh_ca.store.trust import TrustStore, trust_store

__all__ = ["add_root_parser", "print_slots", "root_main", "slots_status"]

_SHOWN_LAGGARDS = 10


def add_root_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "Rotate the root: prepare, activate, retire (or undo), each written to the audit log."
    p = sub.add_parser("root", help=text, description=text)
    actions = p.add_subparsers(dest="root_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("prepare", "Make a new root and an intermediate under it; publish both."),
        ("activate", "Sign with the new root's intermediate (after every sidecar has it)."),
        ("retire", "Stop publishing the old root (after its last leaf expired). Final."),
        ("undo", "Revert the last prepare or activate."),
        ("log", "Print the CA's rotation audit log, most recent first."),
    ):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--dir", type=Path, required=True, help="the CA directory")
        a.add_argument(
            "--passphrase-file",
            type=Path,
            help="file whose first line is the CA key passphrase (else $MESH_CA_PASSPHRASE)",
        )
        if name == "activate":
            a.add_argument(
                "--force",
                action="store_true",
                help="activate although some active sidecars have not reported the new "
                "bundle (their connections to new leaves will fail until they poll)",
            )
        a.add_argument("--json", action="store_true", help="machine-readable output")


def _now() -> datetime:
    return datetime.now(UTC)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _actor() -> str:
    try:
        return f"operator {getpass.getuser()}"
    except (KeyError, OSError):
        return "operator"


def root_main(args: argparse.Namespace) -> int:
    """Run ``mesh-ca root ACTION``; raises `RotationError`, `CaDirError`, `StoreError`."""
    passphrase = read_passphrase(args.passphrase_file)
    ca = load_ca_dir(args.dir, passphrase)
    store = ca.open_store()
    try:
        trust = trust_store(store)
        now = _now()
        if args.root_command == "log":
            entries = trust.audit(200)
            if args.json:
                _out(json.dumps([_entry(e) for e in entries], indent=2))
            for e in [] if args.json else entries:
                _out(f"{e.at.isoformat(timespec='seconds')}  {e.actor}  {e.action}  {e.detail}")
            return 0
        loaded = load_state(trust, ca, now)
        action, new, message = _step(args, ca, trust, loaded, passphrase, now)
        if not save(trust, loaded, new, now, _actor(), action):
            raise RotationError("the trust state changed meanwhile (a CA replica's step?); retry")
    finally:
        store.close()
    if args.json:
        _out(json.dumps({"action": action, "sequence": new.sequence, "message": message}))
    else:
        _out(message)
    return 0


def _step(
    args: argparse.Namespace,
    ca: LoadedCa,
    trust: TrustStore,
    loaded: Loaded,
    passphrase: bytes | None,
    now: datetime,
) -> tuple[str, TrustState, str]:
    state = loaded.state
    lag = ca.config.rotation.policy.replica_lag
    if args.root_command == "prepare":
        if ca.config.keys.backend != "file":
            raise RotationError(
                'root rotation needs keys.backend = "file": the new root\'s key would be a '
                "file next to a CA whose keys live in a PKCS#11 token"
            )
        if state.root_rotation_in_progress:
            root_prepared(state, state.active_root, state.active, now)  # raises the reason
        root, key = new_root_files(ca, passphrase, now)
        try:
            inter = new_intermediate(ca, root.cert, key, passphrase, now, ca.config.rotation.policy)
            new = root_prepared(state, root, inter, now)
        except BaseException:
            for suffix in ("key", "pem"):
                (ca.path / ROOTS_DIR / f"{root.fingerprint[:16]}.{suffix}").unlink(missing_ok=True)
            raise
        return (
            "root prepare",
            new,
            (
                f"prepared root {root.fingerprint[:16]} (key in {ca.path / ROOTS_DIR}); "
                f"published at sequence {new.sequence}. Sidecars learn it at their next poll; "
                "then run `mesh-ca root activate`"
            ),
        )
    if args.root_command == "activate":
        reports = {i: seq for i, (seq, _) in trust.bundle_reports().items()}
        behind = laggards(trust.active_workload_ids(now), reports, state.sequence)
        action = "root activate"
        if behind:
            names = ", ".join(str(i) for i in behind[:_SHOWN_LAGGARDS])
            more = (
                f" and {len(behind) - _SHOWN_LAGGARDS} more"
                if len(behind) > _SHOWN_LAGGARDS
                else ""
            )
            if not args.force:
                raise RotationError(
                    f"{len(behind)} active workload(s) have not reported trust material at "
                    f"sequence {state.sequence} yet: {names}{more}; wait for their next poll, "
                    "or give --force"
                )
            action = f"root activate --force (not reported: {names}{more})"
        new = root_activated(state, now)
        return (
            action,
            new,
            f"activated root {new.active_root.fingerprint[:16]}; sequence {new.sequence}",
        )
    if args.root_command == "retire":
        old = state.root(SlotState.OLD)
        if old is not None:
            last = trust.leaves_until(old.since + lag)
            if last is not None and last > now:
                raise RotationError(
                    f"leaves issued under the old root {old.fingerprint[:16]} are valid until "
                    f"{last.isoformat(timespec='seconds')}; retire after that"
                )
        new = root_retired(state)
        return "root retire", new, f"retired the old root; sequence {new.sequence}"
    if args.root_command == "undo":
        new, undone = root_undone(state, now)
        return f"root undo {undone}", new, f"undid root {undone}; sequence {new.sequence}"
    raise AssertionError(f"unknown root action {args.root_command!r}")


def _entry(e: Any) -> dict[str, str]:
    return {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "detail": e.detail}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def slots_status(trust: TrustStore, config: CaConfig, now: datetime) -> dict[str, Any] | None:
    """The slots, their dates and the sidecars' reports of the stored trust state, for
    ``mesh-ca status`` (None before a CA server or ``root`` command first stored it)."""
    stored = trust.load_state()
    if stored is None:
        return None
    state = TrustState.from_json(stored[1], "store: trust_state")
    policy = config.rotation.policy
    plan = schedule(state, policy, trust.leaves_until)
    reports = {i: seq for i, (seq, _) in trust.bundle_reports().items()}
    active_ids = trust.active_workload_ids(now)
    behind = laggards(active_ids, reports, state.sequence)
    automatic = (
        config.rotation.enabled
        and config.keys.backend == "file"
        and not state.root_rotation_in_progress
    )
    return {
        "sequence": state.sequence,
        "roots": [
            {
                "slot": r.state.value,
                "id": r.fingerprint[:16],
                "since": _iso(r.since),
                "not_after": _iso(r.cert.not_valid_after_utc),
            }
            for r in state.roots
        ],
        "intermediates": [
            {
                "slot": i.state.value,
                "id": i.fingerprint[:16],
                "root": state.issuer_of(i).fingerprint[:16],
                "since": _iso(i.since),
                "not_after": _iso(i.cert.not_valid_after_utc),
                **(
                    {"retire_at": _iso(plan.retire_at[i.fingerprint])}
                    if i.state is SlotState.OLD
                    else {}
                ),
            }
            for i in state.intermediates
        ],
        "automatic": automatic,
        "next_prepare_at": _iso(plan.prepare_at) if automatic else None,
        "next_activate_at": _iso(plan.activate_at) if automatic else None,
        "active_workloads": len(active_ids),
        "workloads_behind": [str(i) for i in behind],
    }


def print_slots(status: dict[str, Any] | None, out: Any = _out) -> None:
    if status is None:
        out("slots          not stored yet (the CA server stores them at its first start)")
        return
    out(f"trust sequence {status['sequence']}")
    for root in status["roots"]:
        out(
            f"root           {root['slot']:<8} {root['id']}  notAfter {root['not_after']}  "
            f"since {root['since']}"
        )
    for inter in status["intermediates"]:
        retire = f"  retire at {inter['retire_at']}" if "retire_at" in inter else ""
        out(
            f"intermediate   {inter['slot']:<8} {inter['id']}  notAfter {inter['not_after']}  "
            f"since {inter['since']}  (root {inter['root']}){retire}"
        )
    if status["automatic"]:
        out(
            f"rotation       next prepare {status['next_prepare_at']}, "
            f"activate {status['next_activate_at']}"
        )
    else:
        out("rotation       automatic steps paused (disabled, or a root rotation in progress)")
    behind = status["workloads_behind"]
    active = status["active_workloads"]
    out(
        f"sidecars       {active - len(behind)} of {active} "
        f"active workload(s) hold sequence {status['sequence']}"
        + (f"; behind: {', '.join(behind[:10])}" if behind else "")
    )
