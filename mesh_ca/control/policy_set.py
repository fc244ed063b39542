"""The control plane's policy set: read and validate a policy directory, slice it per
service (need to know), and decide registrations. Pure apart from `read_policy_files`.

A directory holds `*.cedar` policies, exactly one `*.cedarschema` and `entities.json`, as a
sidecar's does. `load_policy_set` parses every file, gives each policy a unique `@id`,
validates the policies and entities against the schema, and fails closed: any problem
refuses the whole set (`PolicySetError` lists every problem with its file), so a broken
edit is never published and the last good set stays.

Need to know: `slice_for(service)` keeps the policies whose resource scope can match
`Service::"S"` (`resource`, `resource == Service::"S"`, `resource in E` for S itself or an
ancestor of it in entities.json, `resource is Service`); a policy about registration only
(`action == Action::"register"`) concerns the control plane and is left out. Each kept
policy is re-rendered from its parsed form (comments are not carried); a file with none is
left out; the schema and entities.json always go.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, final

import cedarpy

from mesh_ca.control.wire import files_sha256
from meshgate.errors import PolicyError
from meshgate.identity import SpiffeId, SpiffeIdError

__all__ = [
    "ENTITIES_FILE",
    "LoadedPolicySet",
    "PolicySetError",
    "RegisterDecision",
    "directory_fingerprint",
    "load_policy_set",
    "read_policy_files",
    "workload_entity",
]

ENTITIES_FILE: Final = "entities.json"
POLICY_SUFFIX: Final = ".cedar"
SCHEMA_SUFFIX: Final = ".cedarschema"
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
_POLICY_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_REGISTER: Final = {"type": "Action", "id": "register"}


class PolicySetError(PolicyError, ValueError):
    """The directory cannot be published; `problems` says why, each naming its file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def _is_input(name: str) -> bool:
    # Editors leave `.x.cedar.swp`, `x.cedar~` and `.#x.cedar` behind; none of them count.
    if name.startswith((".", "#")):
        return False
    return name.endswith((POLICY_SUFFIX, SCHEMA_SUFFIX)) or name == ENTITIES_FILE


def directory_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, size, mtime_ns) of every input; None when unreadable. A change: reload."""
    try:
        stats = [(e.name, e.stat()) for e in os.scandir(directory) if _is_input(e.name)]
    except OSError:
        return None
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def read_policy_files(directory: Path) -> dict[str, str]:
    """The input files of `directory`, name -> text; `PolicySetError` if one is unreadable."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file() and _is_input(e.name))
    except OSError as exc:
        raise PolicySetError([f"{directory}: cannot list: {exc.strerror or exc}"]) from None
    files: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        try:
            data = (directory / name).read_bytes()
            if len(data) > MAX_FILE_BYTES:
                problems.append(f"{name}: larger than {MAX_FILE_BYTES} bytes")
                continue
            files[name] = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}: cannot read: {exc}")
    if problems:
        raise PolicySetError(problems)
    return files


def workload_entity(spiffe_id: SpiffeId) -> dict[str, Any]:
    """A workload's Cedar entity, its attributes and Namespace parent from its SPIFFE ID
    (the same entity a sidecar builds for a peer)."""
    namespace = spiffe_id.namespace or ""
    return {
        "uid": {"type": "Workload", "id": str(spiffe_id)},
        "attrs": {
            "trust_domain": spiffe_id.trust_domain.name,
            "namespace": namespace,
            "service": spiffe_id.service or "",
        },
        "parents": [{"type": "Namespace", "id": namespace}] if namespace else [],
    }


@final
@dataclass(frozen=True, slots=True)
class RegisterDecision:
    allowed: bool
    policy_ids: tuple[str, ...]  # the determining policies
    errors: tuple[str, ...] = ()


@final
@dataclass(frozen=True)
class LoadedPolicySet:
    """A validated set: its files, content hash, parsed handles and per-file policies."""

    files: Mapping[str, str]
    sha256: str
    schema_name: str
    schema: cedarpy.Schema
    policies: cedarpy.PolicySet
    entity_list: tuple[dict[str, Any], ...]  # entities.json, workloads filled in
    per_file: Mapping[str, tuple[dict[str, Any], ...]]  # file -> policy ESTs in order
    ancestors: Mapping[tuple[str, str], frozenset[tuple[str, str]]]
    positional_ids: Mapping[str, str]  # Cedar's policyN -> the policy's @id
    _slices: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)

    def slice_for(self, service: str) -> dict[str, str]:
        """The files a sidecar of `service` needs (need to know); cached per service."""
        cached = self._slices.get(service)
        if cached is not None:
            return cached
        uid = ("Service", service)
        mine = {uid, *self.ancestors.get(uid, frozenset())}
        files = {self.schema_name: self.files[self.schema_name]}
        files[ENTITIES_FILE] = self.files[ENTITIES_FILE]
        for name, policies in self.per_file.items():
            kept = [p for p in policies if _concerns(p, mine)]
            if kept:
                est = {
                    "staticPolicies": {f"p{i}": p for i, p in enumerate(kept)},
                    "templates": {},
                    "templateLinks": [],
                }
                text = cedarpy.policies_from_json_str(json.dumps(est))
                files[name] = cedarpy.format_policies(text) + "\n"
        if len(self._slices) < 4096:  # one per service that asked; bounded all the same
            self._slices[service] = files
        return files

    def decide_register(
        self,
        principal: SpiffeId,
        service: str,
        address: str,
        protocol: str,
        source_address: str,
        now: datetime,
    ) -> RegisterDecision:
        """May `principal` serve `service`? Fails closed: Allow only with no errors."""
        entities = _with_principal(self.entity_list, principal)
        context = {
            "path": "",
            "query": "",
            "host": "",
            "headers": {},
            "source_address": {"__extn": {"fn": "ip", "arg": source_address}},
            "tls_version": "TLSv1.3",
            "time": {
                "epoch_seconds": int(now.timestamp()),
                "hour": now.hour,
                "minute": now.minute,
                "weekday": now.isoweekday(),
            },
            "service": service,
            "address": address,
            "protocol": protocol,
        }
        request = {
            "principal": {"type": "Workload", "id": str(principal)},
            "action": _REGISTER,
            "resource": {"type": "Service", "id": service},
            "context": context,
        }
        try:
            result = cedarpy.is_authorized(request, self.policies, entities, self.schema)
        except Exception as exc:  # noqa: BLE001 - the engine failing is a deny, never a crash
            return RegisterDecision(allowed=False, policy_ids=(), errors=(f"engine error: {exc}",))
        errors = tuple(str(e) for e in result.diagnostics.errors)
        reasons = tuple(self.positional_ids.get(r, r) for r in result.diagnostics.reasons)
        allowed = result.decision == cedarpy.Decision.Allow and not errors
        return RegisterDecision(allowed, reasons, errors)


def _concerns(policy: dict[str, Any], mine: set[tuple[str, str]]) -> bool:
    action = policy.get("action", {})
    if action.get("op") == "==" and action.get("entity") == _REGISTER:
        return False
    resource = policy.get("resource", {})
    op = resource.get("op")
    if op == "All":
        return True
    if op == "is":
        if resource.get("entity_type") != "Service":
            return False
        inside = resource.get("in")
        return inside is None or (inside["entity"]["type"], inside["entity"]["id"]) in mine
    entity = resource.get("entity")
    if op in ("==", "in") and isinstance(entity, dict):
        return (str(entity.get("type")), str(entity.get("id"))) in mine
    return True  # a form not known here: err on the side of sending it


def _with_principal(
    entity_list: tuple[dict[str, Any], ...], principal: SpiffeId
) -> list[dict[str, Any]]:
    own = workload_entity(principal)
    listed = [e for e in entity_list if e["uid"] == own["uid"]]
    if listed:
        own["parents"] = listed[0]["parents"]
        return [*(e for e in entity_list if e["uid"] != own["uid"]), own]
    return [*entity_list, own]


def load_policy_set(files: Mapping[str, str]) -> LoadedPolicySet:
    """Parse and validate `files` (name -> text); `PolicySetError` lists every problem."""
    problems: list[str] = []
    schemas = sorted(n for n in files if n.endswith(SCHEMA_SUFFIX))
    policy_names = sorted(n for n in files if n.endswith(POLICY_SUFFIX))
    if len(schemas) != 1:
        problems.append(f"expected exactly one *{SCHEMA_SUFFIX}, found {', '.join(schemas) or 0}")
    if ENTITIES_FILE not in files:
        problems.append(f"missing {ENTITIES_FILE}")
    if not policy_names:
        problems.append(f"no *{POLICY_SUFFIX} policy files")
    if problems:
        raise PolicySetError(problems)
    schema_name = schemas[0]
    try:
        schema = cedarpy.Schema.from_str(files[schema_name])
    except ValueError as exc:
        raise PolicySetError([f"{schema_name}: invalid schema: {exc}"]) from None
    per_file: dict[str, tuple[dict[str, Any], ...]] = {}
    seen: dict[str, str] = {}
    for name in policy_names:
        text = files[name]
        try:
            est = json.loads(cedarpy.policies_to_json_str(text))
        except ValueError as exc:
            problems.append(f"{name}: does not parse: {exc}")
            continue
        if est.get("templates"):
            problems.append(f"{name}: templates are not supported")
        static = est.get("staticPolicies", {})
        # In text order (policy0, policy1, ...): the order Cedar numbers them in a set.
        bodies = tuple(
            static[k] for k in sorted(static, key=lambda k: int(k.removeprefix("policy")))
        )
        if not bodies:
            problems.append(f"{name}: holds no policies")
        for body in bodies:
            policy_id = body.get("annotations", {}).get("id")
            if not isinstance(policy_id, str) or not _POLICY_ID_RE.fullmatch(policy_id):
                problems.append(f'{name}: every policy needs an @id("...") of [A-Za-z0-9._:-]')
                continue
            if policy_id in seen:
                problems.append(f"{name}: duplicate @id {policy_id!r} (first in {seen[policy_id]})")
            seen[policy_id] = name
        result = cedarpy.validate_policies(text, schema)
        if not result.validation_passed:
            problems.extend(f"{name}: {error.error}" for error in result.errors)
        per_file[name] = bodies
    entity_list = _entities(files[ENTITIES_FILE], problems)
    if problems:
        raise PolicySetError(problems)
    try:
        cedarpy.Entities.from_json_str(json.dumps(entity_list), schema)
    except ValueError as exc:
        raise PolicySetError([f"{ENTITIES_FILE}: invalid entities: {exc}"]) from None
    # One handle for decisions: the files' texts, each policy annotated with its @id.
    policies = cedarpy.PolicySet.from_str("\n".join(files[n] for n in policy_names))
    # Cedar names the policies of that text policy0, policy1, ... in order: map to @ids.
    ids = [str(b["annotations"]["id"]) for n in policy_names for b in per_file[n]]
    return LoadedPolicySet(
        files=dict(files),
        sha256=files_sha256(dict(files)),
        schema_name=schema_name,
        schema=schema,
        policies=policies,
        entity_list=tuple(entity_list),
        per_file=per_file,
        ancestors=_ancestors(entity_list),
        positional_ids={f"policy{i}": policy_id for i, policy_id in enumerate(ids)},
    )


def _entities(text: str, problems: list[str]) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{ENTITIES_FILE}: invalid JSON: {exc.msg} (line {exc.lineno})")
        return []
    if not isinstance(document, list):
        problems.append(f"{ENTITIES_FILE}: must be a JSON list of entities")
        return []
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(document):
        uid = entry.get("uid") if isinstance(entry, dict) else None
        if not isinstance(uid, dict) or not isinstance(uid.get("id"), str):
            problems.append(f"{ENTITIES_FILE}: entry {index}: needs a uid with type and id")
            continue
        parents = entry.get("parents", [])
        if not isinstance(parents, list) or not all(isinstance(p, dict) for p in parents):
            problems.append(f"{ENTITIES_FILE}: entry {index}: parents must be a list")
            continue
        if uid.get("type") == "Workload":
            try:
                derived = workload_entity(SpiffeId.parse(uid["id"]))
            except SpiffeIdError as exc:
                problems.append(f"{ENTITIES_FILE}: entry {index}: workload id: {exc}")
                continue
            derived["parents"] = [*derived["parents"], *parents]
            out.append(derived)
        else:
            out.append({"uid": uid, "attrs": entry.get("attrs") or {}, "parents": parents})
    return out


def _ancestors(
    entity_list: list[dict[str, Any]],
) -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    parents = {
        (str(e["uid"]["type"]), str(e["uid"]["id"])): [
            (str(p.get("type")), str(p.get("id"))) for p in e["parents"]
        ]
        for e in entity_list
    }
    out: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
    for uid, direct in parents.items():
        seen: set[tuple[str, str]] = set()
        todo = list(direct)
        while todo:
            parent = todo.pop()
            if parent not in seen:
                seen.add(parent)
                todo.extend(parents.get(parent, ()))
        out[uid] = frozenset(seen)
    return out
