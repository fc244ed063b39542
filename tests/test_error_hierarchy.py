"""One exception hierarchy: every exception class meshgate defines derives from `MeshgateError`.

Walks every module of `meshgate`, `mesh_ca` and `sidecar`, imports it, and checks each
exception class defined there (at module level or nested in a class), so a new module cannot
add a stray base. The tree is listed in docs/architecture.md.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate.errors import ConfigError, MeshgateError, StaleConnectionError, TransportError

PACKAGES = ("meshgate", "mesh_ca", "sidecar")
# Optional extras: a module that needs one is checked where the extra is installed (the dev
# venv has them all) and left out where it is not (the minimum-versions run lacks pkcs11).
OPTIONAL = frozenset({"pkcs11", "psycopg", "opentelemetry"})
ROOT = Path(__file__).resolve().parent.parent


def _modules() -> Iterator[str]:
    for package in PACKAGES:
        yield package
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            yield info.name


def _classes(owner: object, module: str) -> Iterator[type]:
    for value in vars(owner).values():
        if inspect.isclass(value) and value.__module__ == module:
            yield value
            yield from _classes(value, module)


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] in OPTIONAL:
                continue
            raise
        for cls in _classes(module, name):
            if issubclass(cls, BaseException):
                found[f"{name}.{cls.__qualname__}"] = cls
    return list(found.values())


def test_the_walk_finds_the_project_exceptions() -> None:
    names = {cls.__qualname__ for cls in _exception_classes()}
    # A walk that finds nothing would pass the checks below vacuously.
    assert {"MeshgateError", "SpiffeIdError", "StoreError", "MeshTlsError", "HttpError"} <= names
    assert len(names) > 40


def test_every_exception_derives_from_meshgate_error() -> None:
    stray = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _exception_classes()
        if not issubclass(cls, MeshgateError)
    )
    assert stray == [], f"derive these from meshgate.errors.MeshgateError (or a family): {stray}"


def test_there_is_one_config_error() -> None:
    named = {cls for cls in _exception_classes() if cls.__name__ == "ConfigError"}
    assert named == {ConfigError}
    # The two config modules re-export it, not a copy.
    assert importlib.import_module("mesh_ca.config").ConfigError is ConfigError
    assert importlib.import_module("sidecar.config").ConfigError is ConfigError


def test_there_is_one_stale_connection_error() -> None:
    stale = {cls for cls in _exception_classes() if "stale" in cls.__name__.lower()}
    assert stale == {StaleConnectionError}
    assert issubclass(StaleConnectionError, TransportError)


def test_value_errors_stay_value_errors() -> None:
    # Callers that catch ValueError around parsing keep working.
    from mesh_ca.tokens import TokenFormatError
    from meshgate.identity import SpiffeIdError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(SpiffeIdError, ValueError)
    assert issubclass(TokenFormatError, ValueError)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('trust_domain = "example.org"\nbogus = 1\n', "bogus"),
        ("[server\n", None),
    ],
)
def test_config_error_names_the_file_and_the_key(
    tmp_path: Path, text: str, key: str | None
) -> None:
    from mesh_ca.config import load_config

    path = tmp_path / "ca.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert str(caught.value).startswith(f"{path}: ")
    if key is not None:
        assert caught.value.key == key
        assert f": {key}: " in str(caught.value)


def test_sidecar_config_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    from sidecar.config import load_config

    path = tmp_path / "sidecar.toml"
    path.write_text("[[outbound]]\nlisten = 7\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert caught.value.key is not None
    assert f"{path}: {caught.value.key}: " in str(caught.value)


def test_docs_architecture_lists_every_exception() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    missing = sorted(
        {cls.__qualname__ for cls in _exception_classes()}
        - set(re.findall(r"\b_?[A-Z][A-Za-z]+\b", section))
    )
    assert missing == [], f"add these to the tree in docs/architecture.md: {missing}"
