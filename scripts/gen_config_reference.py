"""Generates ``docs/configuration.md`` from the pydantic config models, so it cannot rot.

Walks the sidecar's root model (`sidecar.config.SidecarConfig`) and the CA's
(`mesh_ca.config.CaConfig`) and writes every key with its dotted path, type, default and
the field's ``description``. The example configs in ``docs/examples/config/`` are loaded
with the real loaders first and embedded verbatim: a generator run fails on a stale
example. Run:

    .venv/bin/python scripts/gen_config_reference.py            # rewrite the file
    .venv/bin/python scripts/gen_config_reference.py --check    # exit 1 if it is stale
    .venv/bin/python scripts/gen_config_reference.py --missing  # keys without a description
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.functional_validators import PlainValidator

import mesh_ca.config
import sidecar.config

ROOT: Final = Path(__file__).resolve().parent.parent
OUTPUT: Final = ROOT / "docs" / "configuration.md"
EXAMPLES: Final = ROOT / "docs" / "examples" / "config"
SIDECAR_EXAMPLE: Final = EXAMPLES / "sidecar-http.toml"
CA_EXAMPLE: Final = EXAMPLES / "ca.toml"
REGENERATE: Final = ".venv/bin/python scripts/gen_config_reference.py"

# Types whose validators accept a string form; named after what a user writes.
_VALIDATED_NAMES: Final = {
    "_address": '"host:port" string',
    "_loopback": '"host:port" string, loopback only (127.0.0.1, ::1, localhost)',
    "_spiffe_id": '"spiffe://..." string',
    "_access_log": '"stdout", "stderr", "off" or a file path',
    "_otlp_endpoint": '"http(s)://host:port/path" URL',
}
_CLASS_NAMES: Final = {
    sidecar.config.Address: '"host:port" string',
    Path: "path",
}


@dataclass(frozen=True)
class Key:
    path: str
    type: str
    default: str
    description: str | None


@dataclass(frozen=True)
class Section:
    header: str  # "[identity]", "[[outbound]]" or "" for the top level
    kind: str  # "required table", "optional table", ...
    doc: str
    keys: list[Key]


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            out.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            out.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            out.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length}")
        elif getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return out


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    """A user-facing type: what to write in TOML, with its bounds."""
    for item in metadata:
        if isinstance(item, PlainValidator):
            name = _VALIDATED_NAMES.get(getattr(item.func, "__name__", ""))
            if name:
                return name
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], [*args[1:], *metadata])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a, metadata) for a in rest)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in args)
    if origin is tuple:
        bounds = _constraints(metadata)
        text = f"array of {_type_name(args[0], [])}"
        return f"{text} ({', '.join(bounds)})" if bounds else text
    bounds = _constraints(metadata)
    base = _CLASS_NAMES.get(annotation) or {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{base}, {', '.join(bounds)}" if bounds else base


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"'


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default is None:
        return "not set"
    return f"`{_toml(field.default)}`"


def _model_of(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """(model, kind) when `annotation` is a sub-table: "table", "optional" or "array"."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "table"
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and isinstance(rest[0], type) and issubclass(rest[0], BaseModel):
            return rest[0], "optional"
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "array"
    return None


def _doc(model: type[BaseModel]) -> str:
    text = model.__doc__ or ""
    if text == BaseModel.__doc__ or not text.strip():
        return ""
    return " ".join(text.split()).replace("``", "`")


def _sections(
    model: type[BaseModel], prefix: str = "", header: str = "", kind: str = "", doc: str = ""
) -> Iterator[Section]:
    keys: list[Key] = []
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is None:
            keys.append(
                Key(
                    f"{prefix}{name}",
                    _type_name(field.annotation, list(field.metadata)),
                    _default(field),
                    field.description,
                )
            )
            continue
        child, child_kind = sub  # not `kind`: that is this section's own, yielded below
        path = f"{prefix}{name}[]." if child_kind == "array" else f"{prefix}{name}."
        child_header = f"[[{prefix}{name}]]" if child_kind == "array" else f"[{prefix}{name}]"
        how = {
            "table": "required table" if field.is_required() else "table; every key has a default",
            "optional": "optional table",
            "array": "array of tables, zero or more",
        }[child_kind]
        child_doc = field.description or _doc(child)
        nested.extend(_sections(child, path, child_header, how, child_doc))
    if keys:
        yield Section(header, kind, doc, keys)
    yield from nested


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(section: Section) -> list[str]:
    title = f"`{section.header}` ({section.kind})" if section.header else "Top-level keys"
    lines = [f"### {title}", ""]
    if section.doc:
        lines += [section.doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in section.keys:
        meaning = key.description or "*(no description yet)*"
        lines.append(
            f"| `{key.path}` | {_cell(key.type)} | {_cell(key.default)} | {_cell(meaning)} |"
        )
    return [*lines, ""]


def _check_examples() -> None:
    """Fails the run when an example no longer loads with the real loader."""
    sidecar.config.load_config(SIDECAR_EXAMPLE)
    mesh_ca.config.load_config(CA_EXAMPLE)


def models() -> list[tuple[str, type[BaseModel], str]]:
    """(section title, root model, short name for --missing)."""
    return [
        ("Sidecar: `mesh-sidecar run --config FILE.toml`", sidecar.config.SidecarConfig, "sidecar"),
        ("CA: `ca.toml` in the CA directory", mesh_ca.config.CaConfig, "ca"),
    ]


def all_keys() -> list[tuple[str, Key]]:
    return [
        (name, key)
        for _, model, name in models()
        for section in _sections(model)
        for key in section.keys
    ]


def render() -> str:
    _check_examples()
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_reference.py from the pydantic models in",
        "     sidecar/config.py and mesh_ca/config.py. Do not edit by hand. -->",
        "",
        "**Generated from the config models; do not edit.** After adding or changing a key,",
        f"regenerate with one command: `{REGENERATE}`.",
        "`tests/test_docs_config_reference.py` fails while this file is stale, and checks",
        "that the examples at the end load with the real loaders.",
        "",
        "Both files are TOML. Unknown keys are errors, and every error names the file and the",
        "key path (`sidecar.toml: outbound[0].spiffe_ids: ...`). Check a sidecar file without",
        "starting it: `mesh-sidecar check-config FILE.toml`. In the sidecar file, relative paths",
        "(`identity.*_file`, `identity.state_dir`, `policy.dir`, a `log.access_log` file) are",
        "resolved against the config file's directory; in `ca.toml`, `store.path` is relative",
        "to the CA directory. A key path `outbound[].x` is key `x` in every `[[outbound]]` table.",
        "",
    ]
    for title, model, _ in models():
        out += [f"## {title}", ""]
        for section in _sections(model, doc=_doc(model)):
            out += _table(section)
    out += [
        "## Example: an http sidecar with policies",
        "",
        f"[`docs/examples/config/{SIDECAR_EXAMPLE.name}`](examples/config/{SIDECAR_EXAMPLE.name})",
        "",
        "```toml",
        SIDECAR_EXAMPLE.read_text(encoding="utf-8").rstrip("\n"),
        "```",
        "",
        "## Example: a CA",
        "",
        "`mesh-ca init` writes `ca.toml` with every key; edit it and restart `mesh-ca serve`.",
        f"[`docs/examples/config/{CA_EXAMPLE.name}`](examples/config/{CA_EXAMPLE.name})",
        "",
        "```toml",
        CA_EXAMPLE.read_text(encoding="utf-8").rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(out)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    mode.add_argument("--missing", action="store_true", help="list keys without a description")
    args = parser.parse_args(argv)
    if args.missing:
        for name, key in all_keys():
            if not key.description:
                print(f"{name}: {key.path}")
        return 0
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{_shown(OUTPUT)} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {_shown(OUTPUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
