"""`mesh-sidecar policy init DIR`: a new policy directory that validates and tests green.

It holds the schema shipped in the package (`sidecar/policy/schema/`, the same file as the
repository's `policies/mesh.cedarschema`), one commented example permit for the service,
one guardrail forbid, an empty entities file, and test cases that pin the defaults:
nothing permitted is denied, and the guardrail decides deletes.
Existing files are never overwritten, so running it twice cannot lose an author's work.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from meshgate.errors import PolicyError
from meshgate.identity import SpiffeId, TrustDomain
from sidecar.policy.source import ENTITIES_FILE, SCHEMA_SUFFIX, TESTS_FILE

__all__ = ["SCHEMA_NAME", "StarterError", "shipped_schema", "write_starter"]

SCHEMA_NAME = "mesh" + SCHEMA_SUFFIX
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StarterError(PolicyError):
    """The directory cannot be set up; the message names the path."""


def shipped_schema() -> str:
    """The Cedar schema this version of meshgate validates policies against."""
    return resources.files("sidecar.policy").joinpath("schema", SCHEMA_NAME).read_text("utf-8")


def _policy(service: str, caller: SpiffeId) -> str:
    return (
        f"// Policies for {service}. Nothing is allowed unless a permit below says so, and a\n"
        "// forbid wins over every permit. Check with: mesh-sidecar policy validate DIR;\n"
        "// mesh-sidecar policy test DIR runs tests.toml.\n"
        "\n"
        "// A guardrail to start from: nobody deletes anything here.\n"
        f'@id("no-delete-on-{service}")\n'
        f'forbid (principal, action == Action::"DELETE", resource == Service::"{service}");\n'
        "\n"
        "// An example permit: let one caller read. Uncomment and adapt.\n"
        f'// @id("{caller.path.rsplit("/", 1)[-1]}-reads-{service}")\n'
        "// permit (\n"
        f'//   principal == Workload::"{caller}",\n'
        '//   action in Action::"read",\n'
        f'//   resource == Service::"{service}"\n'
        "// );\n"
    )


def _tests(service: str, caller: SpiffeId) -> str:
    return (
        "# Policy test cases: mesh-sidecar policy test DIR runs them.\n"
        "\n"
        "[[case]]\n"
        'name = "nothing is allowed until a policy permits it"\n'
        f'principal = "{caller}"\n'
        'action = "GET"\n'
        f'resource = "{service}"\n'
        'path = "/"\n'
        'expect = "deny"\n'
        "\n"
        "[[case]]\n"
        'name = "nobody deletes"\n'
        f'principal = "{caller}"\n'
        'action = "DELETE"\n'
        f'resource = "{service}"\n'
        'path = "/"\n'
        'expect = "deny"\n'
        f'policies = ["no-delete-on-{service}"]\n'
    )


def write_starter(directory: Path, trust_domain: TrustDomain, service: str) -> list[Path]:
    """Write the starter files into `directory` (created if missing) and return them.
    Refuses, writing nothing, when any of them already exists."""
    if not _SERVICE_RE.fullmatch(service):
        raise StarterError(
            f"--service {service!r}: use letters, digits, '.', '_' and '-' (it names a file)"
        )
    caller = SpiffeId.workload(trust_domain, "default", "caller")
    files = {
        directory / SCHEMA_NAME: shipped_schema(),
        directory / f"{service}.cedar": _policy(service, caller),
        directory / ENTITIES_FILE: json.dumps([]) + "\n",
        directory / TESTS_FILE: _tests(service, caller),
    }
    existing = [str(path) for path in files if path.exists()]
    if existing:
        raise StarterError(f"{', '.join(existing)}: already exists; nothing was written")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StarterError(f"{directory}: {exc.strerror or exc}") from exc
    return list(files)
