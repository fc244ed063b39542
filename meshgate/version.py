"""The installed meshgate version, for `--version` on both CLIs."""

from __future__ import annotations

from importlib import metadata

__all__ = ["installed_version"]


def installed_version() -> str:
    """The distribution's version, or "unknown" when run from a tree that is not installed."""
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:
        return "unknown"
