"""Config loading: every error names the file and the key; good files load with defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import ConfigError, load_config
from tests.pki import TestPki as Pki
from tests.procs import ROOT, write_identity

GOOD = """
[identity]
spiffe_id = "spiffe://example.org/ns/shop/svc/orders"
bundle_file = "bundle.pem"
cert_file = "svid.pem"
key_file = "svid.key"

[inbound]
listen = "127.0.0.1:15443"
app = "127.0.0.1:8080"
service = "orders"
allowed_ids = ["spiffe://example.org/ns/shop/svc/frontend"]

[[outbound]]
listen = "127.0.0.1:15001"
service = "payments"
endpoints = ["127.0.0.1:16443", "[::1]:16444"]
spiffe_ids = ["spiffe://example.org/ns/shop/svc/payments"]

[admin]
listen = "127.0.0.1:15000"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert str(config.identity.trust_domain) == "example.org"
    assert config.identity.static
    assert config.identity.cert_file == tmp_path / "svid.pem"
    assert str(config.outbound[0].endpoints[1]) == "[::1]:16444"
    assert config.timeouts.handshake_timeout_seconds == 10
    assert config.limits.max_connections == 1024
    assert config.workers == 1
    dumped = config.model_dump(mode="json")
    assert dumped["outbound"][0]["spiffe_ids"] == ["spiffe://example.org/ns/shop/svc/payments"]


@pytest.mark.parametrize(
    ("old", "new", "key", "hint"),
    [
        (
            'listen = "127.0.0.1:15001"',
            'listen = "0.0.0.0:15001"',
            "outbound[0].listen",
            "not a loopback",
        ),
        (
            'spiffe_ids = ["spiffe://example.org/ns/shop/svc/payments"]',
            "spiffe_ids = []",
            "outbound[0].spiffe_ids",
            "at least 1",
        ),
        (
            'service = "payments"',
            'service = "payments"\ncolour = "blue"',
            "outbound[0].colour",
            "unknown key",
        ),
        (
            'listen = "127.0.0.1:15000"',
            'listen = "10.0.0.1:15000"',
            "admin.listen",
            "not a loopback",
        ),
        (
            'allowed_ids = ["spiffe://example.org/ns/shop/svc/frontend"]',
            'allowed_ids = ["spiffe://Example.org/x"]',
            "inbound.allowed_ids[0]",
            "trust domain",
        ),
        ('app = "127.0.0.1:8080"', 'app = "127.0.0.1:99999"', "inbound.app", "outside 1..65535"),
        (
            'app = "127.0.0.1:8080"',
            'app = "10.0.0.7:8080"',
            "inbound.app",
            "set inbound.allow_non_loopback_app = true",
        ),
        (
            'app = "127.0.0.1:8080"',
            'app = "orders.internal:8080"',
            "inbound.app",
            "is not a loopback address",
        ),
        (
            'app = "127.0.0.1:8080"',
            'app = "[2001:db8::1]:8080"\nallow_non_loopback_app = false',
            "inbound.app",
            "the hop to the app is plaintext",
        ),
        (
            'key_file = "svid.key"',
            'key_file = "svid.key"\nstate_dir = "state"',
            "identity",
            "not both",
        ),
        (
            '[admin]\nlisten = "127.0.0.1:15000"',
            '[admin]\nlisten = "127.0.0.1:15443"',
            "(top level)",
            "is also inbound.listen",
        ),
        (
            "[inbound]",
            "[timeouts]\nidle_timeout_seconds = -1\n[inbound]",
            "timeouts.idle_timeout_seconds",
            "greater than 0",
        ),
    ],
)
def test_each_bad_value_is_an_error_naming_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, hint: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert hint in message


@pytest.mark.parametrize("app", ["127.0.0.1:8080", "[::1]:8080", "localhost:8080"])
def test_a_loopback_app_needs_no_opt_in(tmp_path: Path, app: str) -> None:
    config = load_config(_write(tmp_path, GOOD.replace('"127.0.0.1:8080"', f'"{app}"')))
    assert config.inbound is not None
    assert str(config.inbound.app) == app
    assert config.inbound.allow_non_loopback_app is False


def test_a_non_loopback_app_loads_once_the_operator_allows_it(tmp_path: Path) -> None:
    text = GOOD.replace('app = "127.0.0.1:8080"', 'app = "10.0.0.7:8080"')
    text = text.replace('service = "orders"', 'service = "orders"\nallow_non_loopback_app = true')
    config = load_config(_write(tmp_path, text))
    assert config.inbound is not None
    assert str(config.inbound.app) == "10.0.0.7:8080"
    assert config.inbound.allow_non_loopback_app is True


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("[admin]", "[admin"))
    with pytest.raises(ConfigError, match=r"TOML syntax error: .*line 20, column 7"):
        load_config(path)


@pytest.fixture
def pki() -> Pki:
    return Pki()


def _identity_files(pki: Pki, directory: Path) -> None:
    """svid.pem, svid.key and bundle.pem for GOOD's identity, as check-config reads them."""
    write_identity(pki, pki.leaf(pki.spiffe_id("shop", "orders")), directory)


def test_check_config_exit_codes(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _identity_files(pki, tmp_path)
    good = _write(tmp_path, GOOD)
    assert main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("spiffe_ids = [", "spiffe_idz = ["))
    assert main(["check-config", str(bad)]) == 1
    assert "outbound[0].spiffe_idz" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert main(["frobnicate"]) == 2
    assert main(["run"]) == 2
    assert main(["--help"]) == 0


def test_admission_limits_default_under_a_small_cap_and_refuse_an_explicit_overshoot(
    tmp_path: Path,
) -> None:
    small = load_config(_write(tmp_path, GOOD + "\n[limits]\nmax_connections = 16\n"))
    assert small.limits.max_connections == 16  # the default pending budget is capped later
    assert small.timeouts.client_hello_timeout_seconds == 3
    over = GOOD + "\n[limits]\nmax_connections = 16\nmax_handshaking_connections = 32\n"
    with pytest.raises(ConfigError, match="max_handshaking_connections must not exceed"):
        load_config(_write(tmp_path, over))


CA_MODE = GOOD.replace(
    'cert_file = "svid.pem"\nkey_file = "svid.key"',
    'ca_addresses = ["127.0.0.1:1"]\nstate_dir = "state"\ntoken_file = "token"',
)


@pytest.mark.parametrize(
    ("breakage", "code", "key"),
    [
        ("no bundle", 3, "identity.bundle_file"),
        ("no key", 3, "identity.key_file"),
        ("garbage key", 3, "identity.key_file"),
        ("key of another certificate", 3, "identity.key_file"),
        ("no policy dir", 6, "policy.dir"),
        ("policy dir that does not load", 6, "policy.dir"),
    ],
)
def test_check_config_refuses_what_run_would_refuse(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], breakage: str, code: int, key: str
) -> None:
    _identity_files(pki, tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    text = GOOD + f'\n[policy]\ndir = "{policies}"\n'
    if breakage == "no bundle":
        (tmp_path / "bundle.pem").unlink()
    elif breakage == "no key":
        (tmp_path / "svid.key").unlink()
    elif breakage == "garbage key":
        (tmp_path / "svid.key").write_text("not a key\n")
    elif breakage == "key of another certificate":
        other = pki.leaf(pki.spiffe_id("shop", "orders"))
        (tmp_path / "svid.key").write_bytes(other.key_pem())
    elif breakage == "no policy dir":
        shutil.rmtree(policies)
    else:
        next(policies.glob("*.cedar")).write_text("permit(principal, action, resource")
    path = _write(tmp_path, text)
    assert main(["check-config", str(path)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{key} = " in err


def test_check_config_in_ca_mode_checks_bundle_and_state_dir(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, CA_MODE)
    assert main(["check-config", str(path)]) == 3  # no bundle file yet
    assert "identity.bundle_file = " in capsys.readouterr().err
    (tmp_path / "bundle.pem").write_bytes(pki.bundle_pem())
    assert main(["check-config", str(path)]) == 0
    (tmp_path / "state").write_text("a file where the directory should be")
    assert main(["check-config", str(path)]) == 4
    assert "identity.state_dir = " in capsys.readouterr().err
    (tmp_path / "state").unlink()
    logged = _write(tmp_path, CA_MODE + '\n[log]\naccess_log = "no-such-dir/access.log"\n')
    assert main(["check-config", str(logged)]) == 3  # run would fail to open it
    assert "log.access_log = " in capsys.readouterr().err
