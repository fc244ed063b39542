"""Which build of the sans-I/O HTTP core (`meshgate.http`) this process loads. Pure Python.

`scripts/build_compiled.sh` compiles the modules of `meshgate/http/` with mypyc into
`meshgate/http/_compiled/` (never committed, never in the wheel), with `BUILD.json`: the
SHA-256 of every source it compiled and of the pure modules their types come from, and
the Python it was built for. The `.py` files stay the source and the fallback: the
compiled directory goes first on `meshgate.http.__path__` only when that stamp matches
the sources and this interpreter exactly, so an edited module is never shadowed by an
old build. ``MESHGATE_HTTP_BUILD`` chooses:

- unset or ``auto``: compiled when a matching build is present, else pure;
- ``pure``: never the compiled build (coverage is measured this way);
- ``compiled``: the compiled build or an `ImportError` saying why not (benchmarks use it,
  so that a stale build cannot silently measure pure Python).

`HTTP_BUILD` ("compiled" or "pure") and `HTTP_BUILD_REASON` say what was chosen and why;
`mesh-sidecar --version`, its start-up log line and the `meshgate_build_info` metric show them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = [
    "BUILD_ENV",
    "COMPILED_DIR_NAME",
    "HTTP_BUILD",
    "HTTP_BUILD_REASON",
    "STAMP_NAME",
    "TYPE_SOURCES",
    "choose_http_path",
    "compiled_sources",
    "decide",
    "describe",
    "http_build",
    "interpreter_tag",
    "source_hashes",
    "stale_reason",
]

BUILD_ENV: Final = "MESHGATE_HTTP_BUILD"
COMPILED_DIR_NAME: Final = "_compiled"
STAMP_NAME: Final = "BUILD.json"
_MESHGATE: Final = Path(__file__).resolve().parent
_HTTP: Final = _MESHGATE / "http"
_BUILD_SCRIPT: Final = _MESHGATE.parent / "scripts" / "build_compiled.sh"
# Not compiled: `meshgate/http/__init__.py` chooses the build, so it must stay Python.
_NOT_COMPILED: Final = frozenset({"__init__.py"})
# Pure modules whose classes and signatures the compiled code was built against.
TYPE_SOURCES: Final = ("errors.py", "records.py", "identity/spiffe_id.py", "identity/__init__.py")

HTTP_BUILD = "pure"
HTTP_BUILD_REASON = "not chosen yet"


def compiled_sources() -> list[Path]:
    """The modules of `meshgate/http/` that the build compiles, sorted."""
    return sorted(p for p in _HTTP.glob("*.py") if p.name not in _NOT_COMPILED)


def interpreter_tag() -> str:
    """The interpreter a build is for (a compiled extension loads into that one only)."""
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def source_hashes(paths: Iterable[Path] | None = None) -> dict[str, str]:
    """SHA-256 of the compiled sources and their type sources, by path under `meshgate/`."""
    chosen = (
        list(paths)
        if paths is not None
        else [*compiled_sources(), *(_MESHGATE / name for name in TYPE_SOURCES)]
    )
    return {
        p.relative_to(_MESHGATE).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in chosen
    }


def _how_to_build(script: Path = _BUILD_SCRIPT) -> str:
    """What builds one here: the script in a source checkout; an installed wheel has none."""
    if script.is_file():
        return "run scripts/build_compiled.sh"
    return "an installed package runs pure Python; a source checkout builds one"


def stale_reason(directory: Path) -> str | None:
    """None when the build in `directory` matches the sources and this interpreter."""
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
    except FileNotFoundError:
        return f"no compiled build: {_how_to_build()}"
    except (OSError, ValueError) as exc:
        return f"unreadable {STAMP_NAME}: {exc}"
    if stamp.get("interpreter") != interpreter_tag():
        return f"built for {stamp.get('interpreter')}, this is {interpreter_tag()}"
    if stamp.get("sources") != source_hashes():
        return f"the sources changed since the build: {_how_to_build()}"
    return None


def decide(wanted: str, directory: Path) -> tuple[str, str]:
    """("compiled" or "pure", why) for the value of ``MESHGATE_HTTP_BUILD`` and the build
    in `directory`. Raises `ImportError` for an unknown value, or for "compiled" without a
    matching build."""
    if wanted not in ("auto", "pure", "compiled"):
        raise ImportError(f"{BUILD_ENV}={wanted!r}: expected auto, pure or compiled")
    if wanted == "pure":
        return "pure", f"{BUILD_ENV}=pure"
    stale = stale_reason(directory)
    if stale is None:
        return "compiled", f"mypyc build in {directory}"
    if wanted == "compiled":
        raise ImportError(f"{BUILD_ENV}=compiled but {stale}")
    return "pure", stale


def choose_http_path(path: list[str]) -> list[str]:
    """`meshgate.http.__path__`, with the compiled directory first when it is chosen."""
    global HTTP_BUILD, HTTP_BUILD_REASON  # set once, when meshgate.http loads
    directory = _HTTP / COMPILED_DIR_NAME
    HTTP_BUILD, HTTP_BUILD_REASON = decide(os.environ.get(BUILD_ENV) or "auto", directory)
    return [str(directory), *path] if HTTP_BUILD == "compiled" else path


def http_build() -> str:
    """ "compiled" or "pure": the build of `meshgate.http` this process loaded."""
    import meshgate.http  # noqa: F401  the choice is made when the package loads

    return HTTP_BUILD


def describe() -> str:
    """One line for `--version` and the start-up log: ``compiled: yes`` or ``no (why)``."""
    if http_build() == "compiled":
        return "compiled: yes (meshgate.http, mypyc)"
    return f"compiled: no ({HTTP_BUILD_REASON})"
