"""``mesh-ca`` CLI: init, issue, tokens, revocations, status, flag errors, passphrases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.cli import main
from mesh_ca.config import ConfigError, load_config
from mesh_ca.duration import format_duration, parse_duration
from mesh_ca.tokens import TokenFormatError, parse_token
from meshgate.identity import SpiffeId

pytestmark = pytest.mark.integration

TD = "cli.example"
SID = f"spiffe://{TD}/ns/default/svc/web"
ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ca"
    assert run(capsys, "init", "--trust-domain", TD, "--dir", str(directory))[0] == 0
    return directory


def test_init_refuses_to_overwrite_without_force(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root_before = (ca / "root.pem").read_bytes()
    code, _, err = run(capsys, "init", "--trust-domain", TD, "--dir", str(ca))
    assert code == 1
    assert "already holds a CA" in err
    assert "--force" in err
    assert (ca / "root.pem").read_bytes() == root_before
    code, _, _ = run(capsys, "init", "--trust-domain", TD, "--dir", str(ca), "--force")
    assert code == 0
    assert (ca / "root.pem").read_bytes() != root_before
    assert not [p for p in ca.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_token_create_prints_only_the_token_and_status_shows_its_id(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "token", "create", "--dir", str(ca), "--spiffe-id", SID)
    assert code == 0
    token = out.strip()
    assert out == token + "\n"
    token_id, secret_hash = parse_token(token)
    secret = token.split(".", 1)[1]
    assert secret not in err

    code, out, _ = run(capsys, "status", "--dir", str(ca), "--json")
    assert code == 0
    status = json.loads(out)
    assert status["trust_domain"] == TD
    assert [t["token_id"] for t in status["outstanding_tokens"]] == [token_id]
    assert secret not in out
    code, text_out, _ = run(capsys, "status", "--dir", str(ca))
    assert token_id in text_out
    assert secret not in text_out

    store = load_ca_dir(ca).open_store()
    try:
        assert store.consume_token(token_id, secret_hash, datetime.now(UTC)) == SpiffeId.parse(SID)
    finally:
        store.close()
    status = json.loads(run(capsys, "status", "--dir", str(ca), "--json")[1])
    assert status["outstanding_tokens"] == []


def test_issue_records_the_ledger_and_revoke_round_trips(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "web"
    code, out, _ = run(
        capsys, "issue", "--dir", str(ca), "--spiffe-id", SID, "--out", str(out_dir), "--ttl", "2h"
    )
    assert code == 0
    serial = next(line.split()[1] for line in out.splitlines() if line.startswith("serial"))
    assert {p.name for p in out_dir.iterdir()} == {"svid.pem", "svid.key", "bundle.pem"}

    code, out, _ = run(capsys, "revoke", "--dir", str(ca), "--spiffe-id", SID, "--reason", "gone")
    assert code == 0
    assert SID in out
    code, out, _ = run(capsys, "revoke", "--dir", str(ca), "--serial", serial.upper())
    assert code == 0
    status = json.loads(run(capsys, "status", "--dir", str(ca), "--json")[1])
    assert status["issued_count"] == 1
    assert status["revocations"][0]["spiffe_id"] == SID
    assert status["revocations"][0]["reason"] == "gone"
    assert status["revocations"][1]["serial"] == serial
    store = load_ca_dir(ca).open_store()
    try:
        [record] = store.issued()
        assert (format(record.serial, "x"), record.kind) == (serial, "offline")
        assert store.is_revoked(SpiffeId.parse(SID), record.serial)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["issue", "--spiffe-id", "spiffe://cli.example/a/", "--out", "x"], "--spiffe-id"),
        (["issue", "--spiffe-id", "spiffe://other.example/a", "--out", "x"], "--spiffe-id"),
        (["issue", "--spiffe-id", "spiffe://cli.example", "--out", "x"], "--spiffe-id"),
        (["issue", "--spiffe-id", "spiffe://cli.example/mesh/ca", "--out", "x"], "--spiffe-id"),
        (["token", "create", "--spiffe-id", "spiffe://cli.example/mesh/ca"], "--spiffe-id"),
        (["token", "create", "--spiffe-id", "spiffe://cli.example/mesh/admin"], "--spiffe-id"),
        (["issue", "--spiffe-id", SID, "--out", "x", "--ttl", "1 hour"], "--ttl"),
        (["issue", "--spiffe-id", SID, "--out", "x", "--ttl", "2m"], "--ttl"),
        (["issue", "--spiffe-id", SID, "--out", "x", "--ttl", "25h"], "--ttl"),
        (["issue", "--spiffe-id", SID], "--out"),
        (["token", "create", "--spiffe-id", "web"], "--spiffe-id"),
        (["token", "create", "--spiffe-id", SID, "--ttl", "0s"], "--ttl"),
        (["revoke", "--serial", "xyz"], "--serial"),
        (["revoke", "--serial", "01", "--spiffe-id", SID], "--spiffe-id"),
        (["revoke"], "--spiffe-id"),
        (["revoke", "--spiffe-id", "spiffe://cli.example/mesh/ca"], "--spiffe-id"),
        (["revoke", "--serial", "01", "--reason", "\x1b[2J"], "--reason"),
        (["revoke", "--serial", "01", "--reason", "x" * 257], "--reason"),
    ],
)
def test_bad_flags_exit_2_and_name_the_flag(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    argv = [a if a != "x" else str(tmp_path / "out") for a in argv]
    words = 2 if argv[0] == "token" else 1  # the command ("token create" is two words)
    code, out, err = run(capsys, *argv[:words], "--dir", str(ca), *argv[words:])
    assert code == 2, err
    # The error line itself, not the usage text above it (which names every flag).
    assert flag in err.strip().splitlines()[-1], err
    assert out == ""
    assert not (tmp_path / "out").exists()


def test_bad_trust_domain_and_missing_dir_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "init", "--trust-domain", "Bad.Example", "--dir", str(tmp_path))
    # The error line itself names the flag (the usage text above it names every flag).
    assert code == 2
    assert "error: argument --trust-domain: trust domain 'Bad.Example'" in err
    code, _, err = run(capsys, "init", "--trust-domain", TD)
    assert code == 2
    assert "error: the following arguments are required: --dir" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2


def test_not_a_ca_directory_is_an_operational_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "status", "--dir", str(tmp_path))
    assert code == 1
    assert "not a CA directory" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["init"], ["issue"], ["token"], ["token", "create"], ["revoke"], ["status"], ["serve"]],
)
def test_help_everywhere(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    assert "usage: mesh-ca" in out


def test_serve_says_clearly_when_the_server_is_not_installed(
    ca: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the lazy import fail as if the module were absent.
    monkeypatch.setitem(sys.modules, "mesh_ca.server.main", None)
    code, _, err = run(capsys, "serve", "--dir", str(ca))
    assert code == 1
    assert "not available" in err


def test_encrypted_keys_need_the_right_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESH_CA_PASSPHRASE", raising=False)
    ca = tmp_path / "ca"
    good, wrong = tmp_path / "pass", tmp_path / "wrong"
    good.write_text("correct horse battery staple\n")
    wrong.write_text("incorrect\n")
    argv = ["init", "--trust-domain", TD, "--dir", str(ca), "--passphrase-file", str(good)]
    assert run(capsys, *argv)[0] == 0
    for key in ("root.key", "intermediate.key"):
        assert b"ENCRYPTED PRIVATE KEY" in (ca / key).read_bytes()

    issue = ["issue", "--dir", str(ca), "--spiffe-id", SID, "--out", str(tmp_path / "o")]
    code, _, err = run(capsys, *issue)
    assert code == 1
    assert "encrypted" in err
    assert "--passphrase-file" in err
    code, _, err = run(capsys, *issue, "--passphrase-file", str(wrong))
    assert code == 1
    assert "wrong passphrase" in err
    assert "incorrect" not in err
    assert not (tmp_path / "o").exists()
    assert run(capsys, *issue, "--passphrase-file", str(good))[0] == 0
    monkeypatch.setenv("MESH_CA_PASSPHRASE", "correct horse battery staple")
    assert run(capsys, *issue)[0] == 0


def test_durations_parse_and_format() -> None:
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("10m").total_seconds() == 600
    assert parse_duration("24h").total_seconds() == 86400
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert format_duration(parse_duration("3600s")) == "1h"
    assert format_duration(parse_duration("90s")) == "90s"
    for bad in ("", "10", "1.5h", "-1m", "1H", "0s", "1h30m", "\n1h", "1w"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_token_format_errors_never_echo_the_secret() -> None:
    secret = "S" * 43
    for bad in (f"mgt_short.{secret}", f"mgt_abcdefghijklmnop.{secret}x", f"xyz_{secret}"):
        with pytest.raises(TokenFormatError) as info:
            parse_token(bad)
        assert secret not in str(info.value)


def test_bootstrap_script_creates_a_ca_and_refuses_to_overwrite(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "bootstrap-ca.sh"
    env = {**os.environ, "MESHGATE_VENV": str(Path(sys.executable).parent.parent)}
    ca = tmp_path / "ca"

    def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(script), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    first = bootstrap(TD, str(ca))
    assert first.returncode == 0, first.stderr
    assert load_ca_dir(ca).trust_domain.name == TD
    again = bootstrap("--trust-domain", TD, "--dir", str(ca))
    assert again.returncode == 1
    assert "already holds a CA" in again.stderr
    forced = bootstrap("--trust-domain", TD, "--dir", str(ca), "--force")
    assert forced.returncode == 0, forced.stderr
    bad = bootstrap(TD)
    assert bad.returncode == 2


def test_init_leaf_ttl_30s_makes_a_ca_that_issues_30_second_svids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "demo-ca"
    code, out, _ = run(
        capsys, "init", "--trust-domain", TD, "--dir", str(directory), "--leaf-ttl", "30s"
    )
    assert code == 0
    assert "leaf TTL      30s" in out
    assert "demos and tests only" in out
    issuance = load_ca_dir(directory).config.issuance
    assert (issuance.default_ttl_seconds, issuance.min_ttl_seconds) == (30, 30)

    code, out, _ = run(
        capsys, "issue", "--dir", str(directory), "--spiffe-id", SID, "--out", str(tmp_path / "o")
    )
    assert code == 0
    leaf = x509.load_pem_x509_certificates((tmp_path / "o" / "svid.pem").read_bytes())[0]
    # NotBefore is backdated 10 s: the lifetime from issuance is the 30 s asked for.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(seconds=40)
    code, _, err = run(
        capsys, "issue", "--dir", str(directory), "--spiffe-id", SID, "--out", str(tmp_path / "p"),
        "--ttl", "20s",
    )  # fmt: skip
    assert code == 2
    assert "--ttl: 20s is outside 30s .. 1d" in err


def test_init_leaf_ttl_of_hours_keeps_the_5_minute_minimum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ca"
    code, out, _ = run(
        capsys, "init", "--trust-domain", TD, "--dir", str(directory), "--leaf-ttl", "2h"
    )
    assert code == 0
    assert "demos and tests" not in out
    issuance = load_ca_dir(directory).config.issuance
    assert (issuance.default_ttl_seconds, issuance.min_ttl_seconds) == (7200, 300)


@pytest.mark.parametrize("value", ["29s", "25h", "0s", "1 minute"])
def test_init_refuses_a_leaf_ttl_outside_30s_to_24h_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    directory = tmp_path / "ca"
    code, _, err = run(
        capsys, "init", "--trust-domain", TD, "--dir", str(directory), "--leaf-ttl", value
    )
    assert code == 2
    assert "--leaf-ttl" in err
    assert not directory.exists()


def test_ca_config_refuses_a_default_ttl_below_the_minimum_naming_the_key(tmp_path: Path) -> None:
    text = f'trust_domain = "{TD}"\n[issuance]\ndefault_ttl_seconds = 30\n'
    (tmp_path / "ca.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"issuance: default_ttl_seconds 30 is below min_ttl"):
        load_config(tmp_path / "ca.toml")
    (tmp_path / "ca.toml").write_text(text + "min_ttl_seconds = 29\n")
    with pytest.raises(ConfigError, match=r"issuance\.min_ttl_seconds: .*greater than or equal"):
        load_config(tmp_path / "ca.toml")
    (tmp_path / "ca.toml").write_text(text + "min_ttl_seconds = 30\n")
    assert load_config(tmp_path / "ca.toml").issuance.ttl_bounds == (
        timedelta(seconds=30),
        timedelta(hours=24),
    )


@pytest.mark.parametrize(
    ("mix", "blamed", "why"),
    [
        ({"bundle.pem"}, "bundle.pem", "does not hold the root"),
        ({"root.pem", "bundle.pem"}, "intermediate.pem", "signature does not verify"),
        ({"ca.toml"}, "root.pem", "is a CA for spiffe://cli.example"),
    ],
)
def test_a_ca_directory_mixed_from_two_cas_is_refused_and_nothing_is_issued(
    ca: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mix: set[str],
    blamed: str,
    why: str,
) -> None:
    """Same trust domain, same certificate names: only the contents tell them apart."""
    other = tmp_path / "other"
    other_td = "other.example" if mix == {"ca.toml"} else TD
    assert run(capsys, "init", "--trust-domain", other_td, "--dir", str(other))[0] == 0
    for name in mix:
        (ca / name).write_bytes((other / name).read_bytes())
    out_dir = tmp_path / "out"
    spiffe_id = f"spiffe://{other_td}/ns/default/svc/web"
    code, out, err = run(
        capsys, "issue", "--dir", str(ca), "--spiffe-id", spiffe_id, "--out", str(out_dir)
    )
    assert code == 1
    assert f"{ca / blamed}: " in err
    assert why in err
    assert (out, out_dir.exists()) == ("", False)


@pytest.mark.parametrize(
    ("key", "mode"), [("intermediate.key", 0o644), ("root.key", 0o640)], ids=["0644", "0640"]
)
def test_a_ca_key_file_open_to_other_users_is_refused(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, mode: int
) -> None:
    (ca / key).chmod(mode)
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "issue", "--dir", str(ca), "--spiffe-id", SID, "--out", str(out_dir))
    assert code == 1
    assert f"{ca / key}: private key is open to other users (mode {mode:04o}); chmod 600" in err
    assert not out_dir.exists()
    (ca / key).chmod(0o600)
    assert run(capsys, "issue", "--dir", str(ca), "--spiffe-id", SID, "--out", str(out_dir))[0] == 0


def _in_small_tmpfs(mount_point: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` with a 4 KiB tmpfs (one page) on `mount_point`, in a private mount
    namespace (unshare: a user namespace, so no root needed and nothing leaks out); the
    output ends with what is left on the tmpfs."""
    script = (
        'mp=$1; shift; mount -t tmpfs -o size=4k tmpfs "$mp" || exit 99; '
        '"$@"; rc=$?; echo "left:"; find "$mp" -mindepth 1; exit $rc'
    )
    unshare = ["unshare", "--user", "--map-root-user", "--mount"]
    return subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(mount_point), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_issue_on_a_full_disk_leaves_no_key_without_its_certificate(
    ca: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None or _in_small_tmpfs(probe, "true").returncode != 0:
        pytest.skip("needs unshare(1) with user namespaces to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    out_dir = small / "web"
    issue = [sys.executable, "-m", "mesh_ca.cli", "issue", "--dir", str(ca), "--spiffe-id", SID]
    result = _in_small_tmpfs(small, *issue, "--out", str(out_dir))
    # The key fits in the one page, the certificate does not: before, svid.key and an
    # empty svid.pem were left behind, and the error named no file.
    assert result.returncode == 1, result.stderr
    assert f"{out_dir}/svid.pem: No space left on device" in result.stderr
    assert result.stdout.split("left:\n", 1)[1] == ""
