"""`mesh-ca root` against a CA directory and its store: the refusals that keep a root
rotation safe, --force, undo, and the audit log (no server needed: the steps are store
writes a running CA applies at its next check)."""

from __future__ import annotations

import contextlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mesh_ca.ca_dir import LoadedCa, init_ca_dir
from mesh_ca.cli import main
from mesh_ca.issuance import make_root
from mesh_ca.store import IssuedRecord
from mesh_ca.store.trust import trust_store
from meshgate.identity import SpiffeId
from meshgate.keys import generate_key

WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")


@pytest.fixture
def ca(tmp_path: Path) -> LoadedCa:
    return init_ca_dir(tmp_path / "ca", "example.org", datetime.now(UTC))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status(capsys: pytest.CaptureFixture[str], ca: LoadedCa) -> dict[str, Any]:
    code, out, _ = run(capsys, "status", "--dir", str(ca.path), "--json")
    assert code == 0
    slots: dict[str, Any] = json.loads(out)["slots"]
    return slots


def web_has_a_live_leaf(ca: LoadedCa) -> None:
    now = datetime.now(UTC)
    with contextlib.closing(ca.open_store()) as store:
        store.record_issued(
            IssuedRecord(77, WEB, "bootstrap", now - timedelta(minutes=1), now + timedelta(hours=1))
        )


def web_reports(ca: LoadedCa, sequence: int) -> None:
    with contextlib.closing(ca.open_store()) as store:
        trust_store(store).report_bundle(WEB, sequence, datetime.now(UTC))


def test_activation_waits_for_every_active_workload_to_report_the_new_bundle(
    ca: LoadedCa, capsys: pytest.CaptureFixture[str]
) -> None:
    web_has_a_live_leaf(ca)
    code, out, err = run(capsys, "root", "prepare", "--dir", str(ca.path))
    assert code == 0, err
    assert "prepared root" in out
    key_files = list((ca.path / "roots").glob("*.key"))
    assert len(key_files) == 1
    assert stat.S_IMODE(key_files[0].stat().st_mode) == 0o600
    slots = status(capsys, ca)
    assert [r["slot"] for r in slots["roots"]] == ["active", "prepared"]
    assert slots["workloads_behind"] == [str(WEB)]

    code, _, err = run(capsys, "root", "activate", "--dir", str(ca.path))
    assert code == 1
    assert str(WEB) in err
    assert "--force" in err

    web_reports(ca, int(slots["sequence"]))
    code, out, err = run(capsys, "root", "activate", "--dir", str(ca.path))
    assert code == 0, err
    assert [r["slot"] for r in status(capsys, ca)["roots"]] == ["old", "active"]

    # web's leaf (issued under the old root) lives another hour.
    code, _, err = run(capsys, "root", "retire", "--dir", str(ca.path))
    assert code == 1
    assert "valid until" in err


def test_force_activates_and_the_audit_log_names_who_had_not_reported(
    ca: LoadedCa, capsys: pytest.CaptureFixture[str]
) -> None:
    web_has_a_live_leaf(ca)
    assert run(capsys, "root", "prepare", "--dir", str(ca.path))[0] == 0
    code, _, err = run(capsys, "root", "activate", "--dir", str(ca.path), "--force")
    assert code == 0, err
    code, out, _ = run(capsys, "root", "log", "--dir", str(ca.path), "--json")
    actions = [entry["action"] for entry in json.loads(out)]
    assert actions[0] == f"root activate --force (not reported: {WEB})"
    assert actions[1:] == ["root prepare", "seed"]


def test_each_step_can_be_undone_until_retirement(
    ca: LoadedCa, capsys: pytest.CaptureFixture[str]
) -> None:
    before = None
    assert run(capsys, "root", "prepare", "--dir", str(ca.path))[0] == 0
    before = status(capsys, ca)
    assert run(capsys, "root", "activate", "--dir", str(ca.path))[0] == 0  # no live leaves
    code, out, _ = run(capsys, "root", "undo", "--dir", str(ca.path))
    assert code == 0
    assert "undid root activate" in out
    undone = status(capsys, ca)
    assert undone["roots"] == [
        {**r, "since": undone["roots"][i]["since"]} for i, r in enumerate(before["roots"])
    ]
    code, out, _ = run(capsys, "root", "undo", "--dir", str(ca.path))
    assert "undid root prepare" in out
    assert [r["slot"] for r in status(capsys, ca)["roots"]] == ["active"]
    code, _, err = run(capsys, "root", "undo", "--dir", str(ca.path))
    assert code == 1
    assert "nothing to undo" in err
    # Prepare, activate, retire (no leaves under the old root): retirement is final.
    for action in ("prepare", "activate", "retire"):
        code, _, err = run(capsys, "root", action, "--dir", str(ca.path))
        assert code == 0, (action, err)
    code, _, err = run(capsys, "root", "undo", "--dir", str(ca.path))
    assert code == 1
    assert "nothing to undo" in err


def test_a_second_prepare_is_refused(ca: LoadedCa, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "root", "prepare", "--dir", str(ca.path))[0] == 0
    code, _, err = run(capsys, "root", "prepare", "--dir", str(ca.path))
    assert code == 1
    assert "already in progress" in err
    assert len(list((ca.path / "roots").glob("*.key"))) == 1  # no orphan key left behind


def test_an_extra_root_in_bundle_pem_stays_published_as_an_old_root_until_retired(
    ca: LoadedCa, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_root(ca.trust_domain, generate_key(), datetime.now(UTC))
    with (ca.path / "bundle.pem").open("ab") as file:
        file.write(other.public_bytes(Encoding.PEM))
    code, out, err = run(capsys, "root", "log", "--dir", str(ca.path))
    assert code == 0, err
    slots = status(capsys, ca)
    assert slots is None  # nothing seeded yet: `root log` only reads
    assert run(capsys, "root", "retire", "--dir", str(ca.path))[0] == 0
    slots = status(capsys, ca)
    assert [r["slot"] for r in slots["roots"]] == ["active"]
    code, out, _ = run(capsys, "root", "log", "--dir", str(ca.path), "--json")
    assert [e["action"] for e in json.loads(out)] == ["root retire", "seed"]
