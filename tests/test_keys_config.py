"""``[keys]`` of ca.toml, the ``mesh-ca init --keys`` flags and the PIN sources: every
mistake is refused before a token is touched, naming the key or flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh_ca.cli import main
from mesh_ca.config import CaConfig, ConfigError, config_from_mapping, load_config, render_config
from mesh_ca.keys_config import KeysConfig
from mesh_ca.keystore import read_pin
from meshgate.exit_codes import ExitCode, StartupError

TOKEN_KEYS: dict[str, Any] = {
    "backend": "pkcs11",
    "module": "/usr/lib/softhsm/libsofthsm2.so",
    "token_label": "ca",
    "pin_env": "CA_PIN",
    "root_key_label": "r",
    "intermediate_key_label": "i",
}


def _config(**keys: Any) -> CaConfig:
    return config_from_mapping({"trust_domain": "example.org", "keys": keys})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"module": "/x.so"}, "keys: module: only with backend = 'pkcs11'"),
        ({"backend": "file", "pin_env": "X"}, "keys: pin_env: only with backend = 'pkcs11'"),
        ({**TOKEN_KEYS, "module": None}, "keys: module: required with backend = 'pkcs11'"),
        ({**TOKEN_KEYS, "token_label": " "}, "keys: token_label: required"),
        ({**TOKEN_KEYS, "pin_env": None}, "keys: pin_env, pin_file: give exactly one"),
        ({**TOKEN_KEYS, "pin_file": "pin"}, "keys: pin_env, pin_file: give exactly one"),
        ({**TOKEN_KEYS, "pin_env": "1BAD-NAME"}, "keys: pin_env: '1BAD-NAME' is not an env"),
        ({**TOKEN_KEYS, "intermediate_key_label": "r"}, "intermediate_key_label: must differ"),
        ({"backend": "yubikey"}, "keys.backend: Input should be 'file' or 'pkcs11'"),
        ({"pin": "1234"}, "keys.pin: unknown key"),  # the PIN has no place in ca.toml
    ],
)
def test_a_wrong_keys_section_is_refused_naming_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"ca\.toml: ") as caught:
        _config(**{k: v for k, v in keys.items() if v is not None})
    assert message in str(caught.value)


def test_a_token_keys_section_round_trips_and_a_file_ca_toml_has_none(tmp_path: Path) -> None:
    token = _config(**TOKEN_KEYS)
    text = render_config(token)
    assert "[keys]" in text
    (tmp_path / "ca.toml").write_text(text)
    assert load_config(tmp_path / "ca.toml") == token
    plain = render_config(CaConfig(trust_domain="example.org"))
    assert "[keys]" not in plain  # file keys: ca.toml exactly as before [keys] existed


def test_describe_says_where_the_keys_are_and_never_the_pin() -> None:
    assert KeysConfig().describe() == "files root.key, intermediate.key (mode 0600)"
    text = KeysConfig(**TOKEN_KEYS).describe()
    assert "PKCS#11 token 'ca'" in text
    assert "'r' (root)" in text
    assert "$CA_PIN" in text


def _init(tmp_path: Path, *flags: str) -> int:
    return main(["init", "--trust-domain", "example.org", "--dir", str(tmp_path / "ca"), *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-label", "ca"], "--token-label: only with --keys pkcs11"),
        (["--keys", "pkcs11", "--token-label", "ca"], "--pkcs11-module: --keys pkcs11 needs"),
        (
            ["--keys", "pkcs11", "--pkcs11-module", "/nonexistent/p11.so"],
            "--pkcs11-module: /nonexistent/p11.so is not a file",
        ),
        (["--keys", "pkcs11", "--pkcs11-module", "p11.so"], "--token-label: --keys pkcs11 needs"),
        (
            ["--keys", "pkcs11", "--pkcs11-module", "p11.so", "--token-label", "ca"],
            "--pin-env: --keys pkcs11 needs --pin-env NAME or --pin-file FILE",
        ),
        (
            ["--keys", "pkcs11", "--pkcs11-module", "p11.so", "--token-label", "ca",
             "--pin-env", "MESHGATE_TEST_UNSET_PIN"],
            "--pin-env: $MESHGATE_TEST_UNSET_PIN is not set",
        ),
        (
            ["--keys", "pkcs11", "--pkcs11-module", "p11.so", "--token-label", "ca",
             "--pin-file", "/nonexistent/pin"],
            "--pin-file: /nonexistent/pin is not a file",
        ),
    ],
)  # fmt: skip
def test_init_flag_mistakes_are_usage_errors_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert _init(tmp_path, *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ca").exists()


def test_init_refuses_a_passphrase_for_token_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pass").write_text("secret\n")
    flags = ["--keys", "pkcs11", "--passphrase-file", str(tmp_path / "pass")]
    assert _init(tmp_path, *flags) == 2
    assert "--passphrase-file: only for --keys file" in capsys.readouterr().err


def _pin_file_keys(pin_file: Path) -> KeysConfig:
    return KeysConfig(**{**TOKEN_KEYS, "pin_env": None, "pin_file": str(pin_file)})


def test_the_pin_comes_from_the_first_line_of_an_owner_only_file(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("4711\nignored\n")
    pin_file.chmod(0o600)
    assert read_pin(_pin_file_keys(pin_file), tmp_path) == (
        "4711",
        ("keys.pin_file", str(pin_file)),
    )
    relative = KeysConfig(**{**TOKEN_KEYS, "pin_env": None, "pin_file": "pin"})
    assert read_pin(relative, tmp_path)[0] == "4711"  # relative to the CA directory


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        ("4711\n", 0o644, "open to other users (mode 0644)"),
        ("", 0o600, "the PIN file is empty"),
        (None, 0o600, "cannot read"),
    ],
)
def test_a_bad_pin_file_is_a_keys_error_naming_keys_pin_file(
    tmp_path: Path, content: str | None, mode: int, problem: str
) -> None:
    pin_file = tmp_path / "pin"
    if content is not None:
        pin_file.write_text(content)
        pin_file.chmod(mode)
    with pytest.raises(StartupError) as caught:
        read_pin(_pin_file_keys(pin_file), tmp_path, "ca.toml: ")
    assert caught.value.code is ExitCode.KEYS
    assert str(caught.value).startswith(f"ca.toml: keys.pin_file = '{pin_file}': ")
    assert problem in str(caught.value)
    assert "4711" not in str(caught.value)


def test_an_unset_pin_env_is_a_keys_error_naming_keys_pin_env(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as caught:
        read_pin(KeysConfig(**TOKEN_KEYS), tmp_path, environ={})
    assert caught.value.code is ExitCode.KEYS
    assert str(caught.value).startswith("keys.pin_env = 'CA_PIN': the environment variable")
    assert read_pin(KeysConfig(**TOKEN_KEYS), tmp_path, environ={"CA_PIN": "1"})[0] == "1"
