#!/usr/bin/env python3
"""Compile the sans-I/O HTTP core (`meshgate/http/*.py`) with mypyc; see `meshgate/native.py`.

    python scripts/build_compiled.py [--check]

Writes the extension modules and `BUILD.json` (the sources' SHA-256, the interpreter) to
`meshgate/http/_compiled/`, which `meshgate.http` puts first on its `__path__` only while
the stamp matches the sources. The `.py` files are not touched and stay the fallback.
`--check` only says whether the present build matches (exit 0) or not (exit 1).

The compile runs in a temporary copy of `meshgate/` (no pyproject.toml there: the
setuptools a fresh virtualenv starts with cannot read this project's license field, and
the build needs nothing from it) with mypy strict, as `mypy` runs on the tree. mypyc comes
with mypy (the dev extra); gcc and the Python headers are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshgate import native  # noqa: E402

_GROUP = "meshgate.http._native"  # the shared library lands in meshgate/http/ with the rest
_MYPY_INI = """\
[mypy]
strict = True
python_version = 3.11

[mypy-httptools.*]
ignore_missing_imports = True
"""


def _compile(out: Path) -> None:
    from mypyc.build import mypycify  # the dev extra's mypy carries mypyc
    from setuptools import setup

    with tempfile.TemporaryDirectory(prefix="meshgate-mypyc-") as name:
        work = Path(name)
        src = work / "src"
        shutil.copytree(
            ROOT / "meshgate",
            src / "meshgate",
            ignore=shutil.ignore_patterns("__pycache__", native.COMPILED_DIR_NAME, "*.so"),
        )
        (src / "mypy.ini").write_text(_MYPY_INI)
        sources = [p.relative_to(ROOT).as_posix() for p in native.compiled_sources()]
        cwd = Path.cwd()
        os.chdir(src)
        try:
            extensions = mypycify(
                ["--config-file", "mypy.ini", *sources], group_name=_GROUP, opt_level="3"
            )
            setup(
                name="meshgate-http-compiled",
                ext_modules=extensions,
                script_args=[
                    "--quiet",
                    "build_ext",
                    "--build-lib",
                    str(work / "lib"),
                    "--build-temp",
                    str(work / "temp"),
                    "--parallel",
                    str(os.cpu_count() or 1),
                ],
            )
        finally:
            os.chdir(cwd)
        built = sorted((work / "lib" / "meshgate" / "http").glob("*.so"))
        expected = {p.stem for p in native.compiled_sources()}
        names = {p.name.split(".")[0] for p in built}
        if not expected <= names:
            raise SystemExit(f"mypyc built {sorted(names)}, expected {sorted(expected)}")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for path in built:
            shutil.copy2(path, out / path.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the present build")
    args = parser.parse_args()
    out = ROOT / "meshgate" / "http" / native.COMPILED_DIR_NAME
    if args.check:
        stale = native.stale_reason(out)  # the same test the import makes
        print(stale or f"up to date: {out}")
        return 0 if stale is None else 1
    before = native.source_hashes()
    started = time.monotonic()
    _compile(out)
    if native.source_hashes() != before:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit("the sources changed during the build; run it again")
    stamp = {
        "interpreter": native.interpreter_tag(),
        "sources": before,
        "built_with": "mypyc " + _mypy_version(),
    }
    (out / native.STAMP_NAME).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    print(
        f"compiled {len(before) - len(native.TYPE_SOURCES)} modules into {out} "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0


def _mypy_version() -> str:
    from mypy.version import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
