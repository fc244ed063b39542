"""Log sinks: application logs on stderr, the access log on stdout, a file or nowhere.

Both are JSON lines (one object per line) unless a human reads them: ``format = "auto"``
picks a short text form when the sink is a terminal, JSON otherwise (a file is never a
terminal). The access log is the ``meshgate.access`` logger (see `sidecar.observe.access`); it does
not propagate, so an access line is never duplicated into the application log. Never pass
secrets (tokens, keys) to either.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from meshgate.errors import MeshgateError
from sidecar.config import LogConfig
from sidecar.observe.access_sink import BatchedAccessSink

__all__ = [
    "AccessJsonFormatter",
    "AccessTextFormatter",
    "JsonFormatter",
    "LogSetupError",
    "TextFormatter",
    "access_text",
    "event",
    "setup_logging",
]

ACCESS_LOGGER = "meshgate.access"
_STANDARD = set(vars(logging.makeLogRecord({})))
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class LogSetupError(MeshgateError, OSError):
    """A log sink could not be opened; the message names the config key."""


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _error(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[1] is not None:
        return f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line |= _fields(record)
        if (error := _error(record)) is not None:
            line["error"] = error
        return json.dumps(line, default=str, separators=(",", ":"))


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and " " not in text else json.dumps(text)


class TextFormatter(logging.Formatter):
    """``12:00:01.234 WARN  sidecar.inbound.tcp  handshake refused  reason=no_client_cert ...``"""

    def format(self, record: logging.LogRecord) -> str:
        clock = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        line = f"{clock} {record.levelname[:5]:<5} {record.name}  {record.getMessage()}"
        line += f"  {fields}" if fields else ""
        if (error := _error(record)) is not None:
            line += f"  error={_text_value(error)}"
        return line


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    access = getattr(record, "access", None)
    if isinstance(access, dict):
        return access
    return {"time": datetime.fromtimestamp(record.created, UTC).isoformat(), "msg": record.msg}


class AccessJsonFormatter(logging.Formatter):
    """The access record itself as one JSON object (see `AccessRecord.as_log`)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_access_fields(record), default=str, separators=(",", ":"))


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    return f"{n}B" if n < 10_000 else f"{n / 1024:.0f}KiB" if n < 10_000_000 else f"{n >> 20}MiB"


def access_text(line: dict[str, Any]) -> str:
    """One access record for a human: who → what, outcome, sizes, time, ids. Pure."""
    time = str(line.get("time", ""))[11:23]
    peer = line.get("peer_id") or "-"
    route = f"{peer} → {line.get('destination', '-')}"
    if line.get("direction") == "outbound":
        route = f"{line.get('source', '-')} → {line.get('destination', '-')} ({peer})"
    request = " ".join(str(p) for p in (line.get("method"), line.get("path")) if p)
    outcome = [str(line["status"])] if line.get("status") is not None else []
    if line.get("decision", "none") != "none":
        outcome.append(str(line["decision"]))
    if line.get("policies"):
        outcome.append("[" + ",".join(line["policies"]) + "]")
    if line.get("reason"):
        outcome.append(f"({line['reason']})")
    duration = line.get("duration_seconds")
    took = f"{duration * 1000:.1f}ms" if isinstance(duration, int | float) else "-"
    parts = [
        time,
        f"{line.get('direction', '-'):<8}",
        route,
        request or "-",
        " ".join(outcome) or "-",
        f"in={_size(line.get('bytes_in'))} out={_size(line.get('bytes_out'))}",
        took,
    ]
    if line.get("request_id"):
        parts.append(f"id={line['request_id']}")
    if line.get("traceparent"):
        parts.append(f"trace={line['traceparent']}")
    return "  ".join(parts)


class AccessTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return access_text(_access_fields(record))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _chosen(fmt: Literal["json", "text", "auto"], stream: TextIO | None) -> str:
    if fmt == "auto":
        return "text" if stream is not None and _is_tty(stream) else "json"
    return fmt


def setup_logging(
    config: LogConfig | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Install the application and access log handlers; `LogSetupError` if a file fails.

    Nothing is changed when the access log file cannot be opened (it is opened first).
    """
    config = config or LogConfig()
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    access_handler: logging.Handler
    access_stream: TextIO | None = None
    if config.access_log == "off":
        access_handler = logging.NullHandler()
    elif config.access_log in ("stdout", "stderr"):
        access_stream = out if config.access_log == "stdout" else err
        access_handler = logging.StreamHandler(access_stream)
    else:
        try:  # reopened when logrotate moves the file away
            access_handler = logging.handlers.WatchedFileHandler(
                config.access_log, encoding="utf-8"
            )
        except OSError as exc:
            raise LogSetupError(
                f"log.access_log: cannot open {config.access_log} ({exc.strerror})"
            ) from exc
    text = _chosen(config.format, access_stream) == "text"
    if access_stream is not None and not text:
        access_handler = BatchedAccessSink(access_stream)  # one write per batch of lines
    access_handler.setFormatter(AccessTextFormatter() if text else AccessJsonFormatter())
    access = logging.getLogger(ACCESS_LOGGER)
    for old in access.handlers:
        old.close()
    access.handlers[:] = [access_handler]
    access.propagate = False
    access.setLevel(logging.CRITICAL + 1 if config.access_log == "off" else logging.INFO)

    handler = logging.StreamHandler(err)
    text = _chosen(config.format, err) == "text"
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[config.level])


def event(logger: logging.Logger, msg: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log `msg` with structured `fields` (they become JSON keys)."""
    logger.log(level, msg, extra=fields)
