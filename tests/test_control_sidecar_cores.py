"""Pure parts of the sidecar's control-plane client: the endpoint answer, the published
policy set checks, registration status, backoff, and the config rules around them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from mesh_ca.client import CaClientError, CaUnavailable
from mesh_ca.control.wire import Endpoint, EndpointSet, PolicySet, RegisterRequest, files_sha256
from sidecar.config import Address, ConfigError, parse_config
from sidecar.control.backoff import Backoff
from sidecar.control.discovery import registered_pairs
from sidecar.control.policies import PolicySetError, check_policy_set
from sidecar.control.registration import RegistrationStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ORDERS = "spiffe://example.org/ns/shop/svc/orders"


def endpoint(address: str, protocol: str = "http") -> Endpoint:
    return Endpoint(address=address, spiffe_id=ORDERS, protocol=protocol, expires_at=NOW)  # type: ignore[arg-type]


def test_registered_pairs_skip_other_protocols_and_unparsable_addresses() -> None:
    answer = EndpointSet(
        service="orders",
        version=4,
        endpoints=(endpoint("127.0.0.1:9001"), endpoint("127.0.0.1:9002", "tcp")),
    )
    pairs, skipped = registered_pairs(answer, "http")
    assert [str(a) for a, _ in pairs] == ["127.0.0.1:9001"]
    assert len(skipped) == 1
    assert "protocol tcp" in skipped[0]


def policy_set(files: dict[str, str], sha256: str | None = None) -> PolicySet:
    return PolicySet(
        version=7,
        sha256=sha256 or files_sha256(files),
        service="orders",
        files=files,
        published_at=NOW,
    )


def test_a_policy_set_whose_hash_does_not_match_is_refused() -> None:
    check_policy_set(policy_set({"a.cedar": "permit(principal, action, resource);"}))
    with pytest.raises(PolicySetError, match="sha256"):
        check_policy_set(policy_set({"a.cedar": "x"}, sha256="0" * 64))


@pytest.mark.parametrize("name", ["../escape.cedar", ".hidden.cedar", "a/b.cedar", "current.json"])
def test_a_policy_file_name_that_could_leave_its_directory_is_refused(name: str) -> None:
    with pytest.raises(PolicySetError, match="file name"):
        check_policy_set(policy_set({name: "x"}))


def test_registration_status_tells_refused_from_unreachable() -> None:
    request = RegisterRequest(service="orders", address="127.0.0.1:9001", protocol="http")
    status = RegistrationStatus(request)
    status.failed(CaClientError(403, "registration_denied", "not allowed"), NOW)
    assert status.state == "refused"
    assert status.view(NOW)["last_error_code"] == "registration_denied"
    status.failed(CaUnavailable(None, "unreachable", "down"), NOW)
    assert status.state == "unreachable"


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(1.0, random.Random(1))
    pauses = [backoff.next() for _ in range(6)]
    assert pauses[0] <= 0.1
    assert all(p <= 1.0 for p in pauses)
    assert pauses[-1] >= 0.5
    backoff.reset()
    assert backoff.next() <= 0.1


BASE = {
    "identity": {
        "spiffe_id": ORDERS,
        "bundle_file": "/b.pem",
        "ca_addresses": ["127.0.0.1:8443"],
        "state_dir": "/state",
    },
    "inbound": {
        "listen": "127.0.0.1:9001",
        "app": "127.0.0.1:8080",
        "service": "orders",
        "protocol": "http",
    },
    "policy": {"source": "control-plane"},
    "control_plane": {},
}


def config(**changes: object) -> dict[str, object]:
    data = {k: dict(v) for k, v in BASE.items()}  # type: ignore[call-overload]
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if value is None:
            data[section].pop(key, None)
        else:
            data[section][key] = value
    return data


def test_the_advertised_address_defaults_to_a_specific_listen_address() -> None:
    parsed = parse_config(config(), source="t.toml")
    assert parsed.inbound is not None
    assert parsed.inbound.advertised == Address("127.0.0.1", 9001)


def test_a_wildcard_listen_without_advertise_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"inbound\.advertise"):
        parse_config(config(inbound__listen="0.0.0.0:9001"), source="t.toml")
    parsed = parse_config(
        config(inbound__listen="0.0.0.0:9001", inbound__advertise="10.0.0.5:9001"),
        source="t.toml",
    )
    assert parsed.inbound is not None
    assert str(parsed.inbound.advertised) == "10.0.0.5:9001"


def test_control_plane_features_without_the_section_name_what_is_missing() -> None:
    data = config()
    del data["control_plane"]
    with pytest.raises(ConfigError, match=r"control-plane.*needs a \[control_plane\]"):
        parse_config(data, source="t.toml")
    data = config(policy__source="dir", policy__dir="/p")
    del data["control_plane"]
    data["outbound"] = [{"listen": "127.0.0.1:7001", "service": "payments"}]
    with pytest.raises(ConfigError, match=r"outbound\[0\].endpoints is empty"):
        parse_config(data, source="t.toml")


def test_static_endpoints_still_need_spiffe_ids() -> None:
    data = config()
    data["outbound"] = [
        {"listen": "127.0.0.1:7001", "service": "payments", "endpoints": ["127.0.0.1:9"]}
    ]
    with pytest.raises(ConfigError, match=r"outbound\[0\].spiffe_ids"):
        parse_config(data, source="t.toml")


def test_policy_source_and_dir_must_agree() -> None:
    with pytest.raises(ConfigError, match="dir is not used"):
        parse_config(config(policy__dir="/p"), source="t.toml")
    with pytest.raises(ConfigError, match="dir is required"):
        parse_config(config(policy__source="dir"), source="t.toml")


def test_control_plane_needs_identity_from_the_ca() -> None:
    data = config(
        identity__ca_addresses=None,
        identity__state_dir=None,
        identity__cert_file="/c.pem",
        identity__key_file="/k.pem",
    )
    with pytest.raises(ConfigError, match="control_plane: needs identity from the CA"):
        parse_config(data, source="t.toml")
