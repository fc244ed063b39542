"""Reading a TOML config file and reporting its errors, shared by ``ca.toml`` and the sidecar.

Every message starts with the file and, for a validation error, the key path
(``ca.toml: server.listen: ...``, ``sidecar.toml: outbound[0].spiffe_ids: ...``), so an
operator knows where to look without reading a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

from meshgate.errors import ConfigError
from meshgate.identity import SpiffeIdError, TrustDomain

__all__ = ["TrustDomainName", "config_error", "key_path", "read_toml", "validation_message"]


def _trust_domain_name(value: str) -> str:
    try:
        return TrustDomain.parse(value).name
    except SpiffeIdError as exc:
        raise ValueError(str(exc)) from exc


# A config key holding a SPIFFE trust domain: checked and normalized (lower case) on load.
TrustDomainName = Annotated[str, AfterValidator(_trust_domain_name)]


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed document; raises `ConfigError` naming the file (and line, for bad TOML)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})", file=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=path
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}", file=path) from exc


def key_path(loc: tuple[int | str, ...]) -> str:
    """``("outbound", 0, "listen")`` as ``outbound[0].listen``; ``(top level)`` if empty."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(top level)"


def validation_message(source: str, exc: ValidationError) -> str:
    """One line per error: ``SOURCE: KEY.PATH: message``."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {key_path(tuple(error['loc']))}: {message}")
    return "\n".join(lines)


def config_error(source: str, exc: ValidationError) -> ConfigError:
    """The `ConfigError` for a validation failure: every key in the message (one line
    each), the file and the first failing key as attributes."""
    errors = exc.errors()
    key = key_path(tuple(errors[0]["loc"])) if errors else None
    return ConfigError(validation_message(source, exc), file=source, key=key)
