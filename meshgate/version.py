"""The installed meshgate version, for `--version` on both CLIs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

__all__ = ["VersionAction", "installed_version"]


def installed_version() -> str:
    """The distribution's version, or "unknown" when run from a tree that is not installed."""
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:
        return "unknown"


class VersionAction(argparse.Action):
    """``--version``: ``PROG VERSION`` and a second line saying whether `meshgate.http` is
    the mypyc build (`meshgate/native.py`). Lazy: the HTTP core is imported only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and whether meshgate.http is compiled")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from meshgate import native

        sys.stdout.write(f"{parser.prog} {installed_version()}\n{native.describe()}\n")
        parser.exit()
