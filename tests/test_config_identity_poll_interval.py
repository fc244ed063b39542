"""[identity] poll_interval_seconds: how often a CA-mode sidecar fetches bundle and revocations."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.identity.settings import IdentitySettings

CA_MODE = """
[identity]
spiffe_id = "spiffe://example.org/ns/shop/svc/orders"
bundle_file = "bundle.pem"
ca_addresses = ["127.0.0.1:8443"]
state_dir = "state"
{extra}

[inbound]
listen = "127.0.0.1:15443"
app = "127.0.0.1:8080"
service = "orders"
allowed_ids = ["spiffe://example.org/ns/shop/svc/frontend"]
"""


def _load(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return path


def test_the_interval_reaches_the_identity_lifecycle(tmp_path: Path) -> None:
    config = load_config(_load(tmp_path, CA_MODE.format(extra="poll_interval_seconds = 2")))
    assert IdentitySettings.from_config(config.identity).poll_interval_seconds == 2.0
    default = load_config(_load(tmp_path, CA_MODE.format(extra="")))
    assert IdentitySettings.from_config(default.identity).poll_interval_seconds == 30.0


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        (CA_MODE.format(extra="poll_interval_seconds = 0.5"), "greater than or equal to 1"),
        (CA_MODE.format(extra="poll_interval_seconds = 7200"), "less than or equal to 3600"),
        (
            CA_MODE.replace('ca_addresses = ["127.0.0.1:8443"]\nstate_dir = "state"', "").format(
                extra='cert_file = "svid.pem"\nkey_file = "svid.key"\npoll_interval_seconds = 2'
            ),
            "reload_interval_seconds",
        ),
    ],
)
def test_a_bad_interval_is_an_error_naming_the_key(tmp_path: Path, text: str, hint: str) -> None:
    path = _load(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: identity"), message
    assert hint in message
