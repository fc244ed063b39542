"""The control-plane wire models refuse what the contract refuses (unit, pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh_ca.control.wire import (
    EndpointsWatch,
    RegisterRequest,
    check_address,
    files_sha256,
)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:8443", "[::1]:9000", "orders.default.svc:443", "a-b.example.:1", "10.0.0.7:65535"],
)
def test_dialable_addresses_are_accepted(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "host:port"),
        (":8443", "host:port"),
        ("127.0.0.1:0", "port"),
        ("127.0.0.1:65536", "port"),
        ("127.0.0.1:+80", "port"),
        ("127.0.0.1:٨٠", "port"),
        ("0.0.0.0:8443", "dial"),
        ("[::]:8443", "dial"),
        ("224.0.0.1:80", "dial"),
        ("999.1.1.1:80", "IPv4"),
        ("[::1:80", "unclosed"),
        ("[zz]:80", "IPv6"),
        ("-bad.example:80", "DNS"),
        ("a b:80", "DNS"),
        ("x" * 300 + ":80", "longer"),
    ],
)
def test_addresses_that_are_not_addresses_are_refused(address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_address(address)


def test_register_request_refuses_unknown_fields_and_bad_services() -> None:
    ok = '{"service": "orders", "address": "127.0.0.1:1", "protocol": "http"}'
    assert RegisterRequest.model_validate_json(ok).service == "orders"
    for body in (
        '{"service": "orders", "address": "127.0.0.1:1", "protocol": "http", "spiffe_id": "x"}',
        '{"service": "Service::\\"x\\"", "address": "127.0.0.1:1", "protocol": "http"}',
        '{"service": "orders", "address": "127.0.0.1:1", "protocol": "udp"}',
        '{"service": "orders", "address": "0.0.0.0:1", "protocol": "tcp"}',
        '{"service": "", "address": "127.0.0.1:1", "protocol": "tcp"}',
    ):
        with pytest.raises(ValidationError):
            RegisterRequest.model_validate_json(body)


def test_a_watch_waits_at_most_thirty_seconds() -> None:
    assert EndpointsWatch.model_validate_json('{"service": "a"}').wait_ms == 0
    with pytest.raises(ValidationError):
        EndpointsWatch.model_validate_json('{"service": "a", "wait_ms": 30001}')
    with pytest.raises(ValidationError):
        EndpointsWatch.model_validate_json('{"service": "a", "after": -1}')


def test_the_files_hash_depends_on_names_and_texts() -> None:
    assert files_sha256({"a": "bc"}) != files_sha256({"ab": "c"})
    assert files_sha256({"a": "1", "b": "2"}) == files_sha256({"b": "2", "a": "1"})
