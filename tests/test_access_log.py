"""Access log sinks and formats: JSON lines with every field, text on a terminal, off, files."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import pytest

from sidecar.config import LogConfig, parse_config
from sidecar.observe.access import AccessRecord, Observer
from sidecar.observe.logs import LogSetupError, access_text, event, setup_logging
from sidecar.observe.metrics import SidecarMetrics

T0 = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
PEER = "spiffe://example.org/ns/shop/svc/web"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FIELDS = {
    "time",
    "direction",
    "peer_id",
    "method",
    "path",
    "status",
    "decision",
    "policies",
    "bytes_in",
    "bytes_out",
    "duration_seconds",
    "request_id",
    "traceparent",
}


def _record(**changes: object) -> AccessRecord:
    base: dict[str, object] = {
        "time": T0,
        "direction": "inbound",
        "protocol": "http",
        "peer_id": PEER,
        "source": "127.0.0.1:40000",
        "destination": "orders",
        "method": "GET",
        "path": "/orders/1",
        "status": 200,
        "decision": "allow",
        "policies": ("shop-read", "guardrail"),
        "bytes_in": 0,
        "bytes_out": 1234,
        "duration_seconds": 0.0042,
        "request_id": "req-1",
        "traceparent": TRACEPARENT,
    }
    return AccessRecord(**(base | changes))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, access = logging.getLogger(), logging.getLogger("meshgate.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.level, access.propagate)
    yield
    for handler in access.handlers:
        if handler not in saved[2]:
            handler.close()
    root.handlers[:], root.level = saved[0], saved[1]
    access.handlers[:], access.level, access.propagate = saved[2], saved[3], saved[4]


def _observe(record: AccessRecord) -> None:
    Observer(SidecarMetrics(), "spiffe://example.org/ns/shop/svc/orders").request(record)


def test_json_access_line_has_every_field() -> None:
    out, err = io.StringIO(), io.StringIO()
    setup_logging(LogConfig(access_log="stdout", format="auto"), stdout=out, stderr=err)
    _observe(_record())
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert set(line) >= FIELDS
    assert line["time"] == "2024-05-01T12:30:15.123+00:00"
    assert line["peer_id"] == PEER
    assert line["policies"] == ["shop-read", "guardrail"]
    assert (line["status"], line["decision"], line["bytes_out"]) == (200, "allow", 1234)
    assert (line["request_id"], line["traceparent"]) == ("req-1", TRACEPARENT)
    assert line["duration_seconds"] == 0.0042
    assert err.getvalue() == "", "access lines never reach the application log"


def test_tcp_connection_record_is_one_json_line() -> None:
    out = io.StringIO()
    setup_logging(LogConfig(access_log="stdout", format="json"), stdout=out, stderr=io.StringIO())
    _observe(
        _record(protocol="tcp", method="connect", path=None, status=None, reason="no_client_cert")
    )
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert (line["protocol"], line["method"], line["reason"]) == (
        "tcp",
        "connect",
        "no_client_cert",
    )


def test_access_log_to_stderr_and_application_log_stay_separate_objects() -> None:
    out, err = io.StringIO(), io.StringIO()
    setup_logging(LogConfig(access_log="stderr", format="json"), stdout=out, stderr=err)
    _observe(_record())
    event(logging.getLogger("sidecar.test"), "hello", answer=42)
    first, second = (json.loads(x) for x in err.getvalue().splitlines())
    assert first["path"] == "/orders/1"
    assert (second["msg"], second["answer"], second["level"]) == ("hello", 42, "info")
    assert out.getvalue() == ""


def test_access_log_off_writes_nothing() -> None:
    out, err = io.StringIO(), io.StringIO()
    setup_logging(LogConfig(access_log="off"), stdout=out, stderr=err)
    _observe(_record())
    assert out.getvalue() == err.getvalue() == ""


def test_access_log_file_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier":true}\n')
    setup_logging(LogConfig(access_log=str(path), format="auto"), stderr=io.StringIO())
    _observe(_record(request_id="a"))
    _observe(_record(request_id="b"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x.get("request_id") for x in lines] == [None, "a", "b"], "auto on a file is JSON"


def test_unopenable_access_log_names_the_key_and_changes_nothing(tmp_path: Path) -> None:
    before = logging.getLogger("meshgate.access").handlers[:]
    bad = tmp_path / "missing-dir" / "access.log"
    with pytest.raises(LogSetupError, match=r"log\.access_log: cannot open .*missing-dir"):
        setup_logging(LogConfig(access_log=str(bad)))
    assert logging.getLogger("meshgate.access").handlers == before


def test_level_filters_application_logs() -> None:
    err = io.StringIO()
    setup_logging(LogConfig(level="warning", format="json"), stdout=io.StringIO(), stderr=err)
    log = logging.getLogger("sidecar.test")
    event(log, "quiet")
    event(log, "loud", level=logging.WARNING)
    assert [json.loads(x)["msg"] for x in err.getvalue().splitlines()] == ["loud"]


def test_relative_access_log_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    data = {
        "identity": {
            "spiffe_id": "spiffe://example.org/ns/a/svc/b",
            "bundle_file": "b.pem",
            "cert_file": "c.pem",
            "key_file": "k.pem",
        },
        "outbound": [
            {
                "listen": "127.0.0.1:1",
                "service": "s",
                "endpoints": ["127.0.0.1:2"],
                "spiffe_ids": ["spiffe://example.org/ns/a/svc/s"],
            }
        ],
        "log": {"access_log": "logs/access.log", "format": "text"},
    }
    config = parse_config(data, source="x.toml", base=tmp_path)
    assert config.log.access_log == str(tmp_path / "logs/access.log")
    data["log"] = {"format": "yaml"}
    with pytest.raises(ValueError, match=r"x\.toml: log\.format: "):
        parse_config(data, source="x.toml")


def test_text_form_reads_as_a_sentence() -> None:
    line = access_text(_record().as_log())
    assert line.startswith("12:30:15.123  inbound ")
    assert f"{PEER} → orders" in line
    assert "GET /orders/1" in line
    assert "200 allow [shop-read,guardrail]" in line
    assert "in=0B out=1234B" in line
    assert "4.2ms" in line
    assert "id=req-1" in line
    assert f"trace={TRACEPARENT}" in line
    denied = access_text(_record(status=403, decision="deny", policies=("no-admin",)).as_log())
    assert "403 deny [no-admin]" in denied


def _pty_stream() -> tuple[TextIO, int]:
    """A text stream whose isatty() is true (the writing end of a pseudo-terminal)."""
    leader, follower = os.openpty()
    return open(follower, "w", encoding="utf-8", closefd=True), leader


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_auto_format_on_a_terminal_is_human_readable() -> None:
    tty, leader = _pty_stream()
    try:
        setup_logging(LogConfig(access_log="stdout", format="auto"), stdout=tty, stderr=tty)
        _observe(_record())
        event(
            logging.getLogger("sidecar.inbound.tcp"), "handshake refused", reason="no_client_cert"
        )
        tty.flush()
        lines = _read_all(leader).splitlines()
    finally:
        tty.close()
        os.close(leader)
    assert len(lines) == 2
    access, app = lines
    assert not access.startswith("{")
    assert "GET /orders/1" in access
    assert "INFO  sidecar.inbound.tcp  handshake refused  reason=no_client_cert" in app


def test_json_format_is_forced_even_on_a_terminal() -> None:
    tty, leader = _pty_stream()
    try:
        setup_logging(LogConfig(access_log="stdout", format="json"), stdout=tty, stderr=tty)
        _observe(_record())
        tty.flush()
        lines = _read_all(leader).splitlines()
    finally:
        tty.close()
        os.close(leader)
    assert json.loads(lines[0])["path"] == "/orders/1"


def test_the_access_line_holds_every_field_of_the_record_in_order() -> None:
    """`as_log` is written out by hand (for speed): it must stay what `asdict` gave, with
    every field, including one added to `AccessRecord` later."""
    from dataclasses import asdict, fields

    record = _record(extra={"upstream": "127.0.0.1:9"}, policies=("a", "b"), reason="x")
    reference = asdict(record)
    reference["time"] = record.time.isoformat(timespec="milliseconds")
    reference["policies"] = ["a", "b"]
    reference["duration_seconds"] = round(record.duration_seconds, 6)
    reference |= reference.pop("extra")
    line = record.as_log()
    assert list(line.items()) == list(reference.items())
    assert set(line) >= {f.name for f in fields(AccessRecord)} - {"extra"}
