"""The checks a sidecar makes before it binds a socket or talks to the CA.

``mesh-sidecar run`` calls `preflight` first and ``mesh-sidecar check-config`` calls it and
stops there, so a config that check-config calls ok gets past every local check of run.
Each failure is a `StartupError`: one line naming the config key and value, and the exit
code of its cause. Synchronous file I/O (start-up only).

- static identity (``cert_file``/``key_file``): the files exist, are readable, parse, the
  key matches the certificate, the SVID is valid now, for ``spiffe_id``, and chains to
  ``bundle_file`` (the same loader the sidecar serves with);
- CA mode: ``bundle_file`` holds roots, ``state_dir`` can be created or written,
  ``token_file`` (when present) is readable;
- ``[policy] dir`` loads and validates against its schema;
- ``log.access_log``, a file, can be appended to (or created);
- ``[tracing]``: the OpenTelemetry packages (``meshgate[tracing]``) are installed.
"""

from __future__ import annotations

import importlib.util
import os
from datetime import datetime
from pathlib import Path

from meshgate.exit_codes import ExitCode, StartupError
from sidecar.config import SidecarConfig
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.state import StateError, load_bundle_file, read_join_token
from sidecar.identity.static_files import StaticIdentityError, load_static_credentials

__all__ = ["preflight"]


def preflight(config: SidecarConfig, now: datetime) -> None:
    """Every local check `run` makes at start-up; raises the first `StartupError`."""
    settings = IdentitySettings.from_config(config.identity)
    if settings.static:
        _check_static(settings, now)
    else:
        _check_ca_mode(settings)
    if config.policy is not None and config.policy.dir is not None:
        _check_policy(config.policy.dir, now)
    _check_access_log(config.log.access_log)
    if config.tracing is not None:
        _check_tracing(config.tracing.endpoint)


def _check_tracing(endpoint: str) -> None:
    """``[tracing]`` needs the optional OpenTelemetry packages (``meshgate[tracing]``)."""
    for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            raise StartupError(
                "tracing.endpoint",
                endpoint,
                f"tracing needs {module.rsplit('.', 1)[0]}: pip install 'meshgate[tracing]'",
                ExitCode.FAILED,
            )


def _check_static(settings: IdentitySettings, now: datetime) -> None:
    try:
        load_static_credentials(settings, now)
    except StaticIdentityError as exc:
        key, value = _static_key(settings, str(exc))
        raise StartupError(key, value, str(exc), ExitCode.FILE) from exc


def _static_key(settings: IdentitySettings, message: str) -> tuple[str, Path | None]:
    """The config key whose file the loader's message names (it starts with the path)."""
    if "private key does not match" in message:  # named after the certificate it fails
        return "identity.key_file", settings.key_file
    for key in ("key_file", "bundle_file", "cert_file"):
        path = getattr(settings, key)
        if path is not None and message.startswith(str(path)):
            return f"identity.{key}", path
    return "identity.cert_file", settings.cert_file


def _check_ca_mode(settings: IdentitySettings) -> None:
    try:
        load_bundle_file(settings.bundle_file, settings.spiffe_id.trust_domain)
    except StateError as exc:
        raise StartupError(
            "identity.bundle_file", settings.bundle_file, str(exc), ExitCode.FILE
        ) from exc
    assert settings.state_dir is not None  # checked by IdentitySettings
    problem = state_dir_problem(settings.state_dir)
    if problem is not None:
        raise StartupError("identity.state_dir", settings.state_dir, problem, ExitCode.STATE)
    try:
        read_join_token(settings.token_file)
    except StateError as exc:
        raise StartupError(
            "identity.token_file", settings.token_file, str(exc), ExitCode.FILE
        ) from exc


def state_dir_problem(path: Path) -> str | None:
    """Why `path` cannot serve as a state directory (without creating it), or None."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return "the directory is not writable"
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"does not exist and cannot be created ({parent} is not a writable directory)"
    return None


def _check_access_log(sink: str) -> None:
    if sink in ("stdout", "stderr", "off"):
        return
    path = Path(sink)
    if path.exists():
        problem = None if path.is_file() and os.access(path, os.W_OK) else "not a writable file"
    elif not path.parent.is_dir():
        problem = f"cannot be created: {path.parent} is not a directory"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"cannot be created: {path.parent} is not writable"
    else:
        problem = None
    if problem is not None:
        raise StartupError("log.access_log", path, problem, ExitCode.FILE)


def _check_policy(directory: Path, now: datetime) -> None:
    from sidecar.policy.loader import PolicyLoadError, load_snapshot  # cedarpy: only when asked

    if not directory.is_dir():
        raise StartupError("policy.dir", directory, "not a directory", ExitCode.POLICY)
    try:
        load_snapshot(directory, now)
    except PolicyLoadError as exc:
        raise StartupError("policy.dir", directory, str(exc), ExitCode.POLICY) from exc
