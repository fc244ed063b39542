"""Load a policy directory into a validated `PolicySnapshot`, or say exactly what is wrong.

Fails closed: any unreadable, unparsable or invalid file, a policy without a unique `@id`,
a template, or an empty set makes the whole load fail. There is no partial result and no
"no policies" result. Each statement is parsed and validated on its own so that every
problem names its file, line and policy id; all problems are collected, not just the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meshgate.errors import PolicyError
from meshgate.identity import SpiffeId, SpiffeIdError
from sidecar.policy.context import (
    CONTEXT_FIELDS,
    context_reads,
    header_names_read,
    reads_headers_whole,
    request_context,
)
from sidecar.policy.snapshot import (
    PolicyInfo,
    PolicySnapshot,
    SliceIndex,
    ancestors_of,
    resource_targets,
)
from sidecar.policy.source import (
    PolicyDirectory,
    PolicyProblem,
    Statement,
    read_policy_directory,
    split_statements,
)

if TYPE_CHECKING:
    import cedarpy

__all__ = ["PolicyLoadError", "load_snapshot", "workload_entity"]

WORKLOAD_TYPE: Final = "Workload"
NAMESPACE_TYPE: Final = "Namespace"
SERVICE_TYPE: Final = "Service"
ACTION_TYPE: Final = "Action"
_PROBE_PRINCIPAL: Final = "spiffe://probe.invalid/ns/probe/svc/probe"
_PROBE_TIME: Final = datetime(2024, 1, 1, tzinfo=UTC)
_POLICY_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_POSITIONAL_ID_RE: Final = re.compile(r"`policy0`")
_ACTIONS_SLOT: Final = "\x00actions\x00"  # where merged messages name their actions
_ACTION_IN_MESSAGE_RE: Final = re.compile(r'Action::"((?:[^"\\]|\\.)*)"')


class PolicyLoadError(PolicyError):
    """A policy directory cannot go live; `problems` lists every reason, located."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in problems))

    @property
    def first(self) -> PolicyProblem:
        return self.problems[0]


def workload_entity(spiffe_id: SpiffeId) -> dict[str, Any]:
    """The Cedar entity of a workload: attributes and Namespace parent from its SPIFFE ID."""
    namespace = spiffe_id.namespace or ""
    parents = [{"type": NAMESPACE_TYPE, "id": namespace}] if namespace else []
    return {
        "uid": {"type": WORKLOAD_TYPE, "id": str(spiffe_id)},
        "attrs": {
            "trust_domain": spiffe_id.trust_domain.name,
            "namespace": namespace,
            "service": spiffe_id.service or "",
        },
        "parents": parents,
    }


def load_snapshot(directory: Path, now: datetime) -> PolicySnapshot:
    """Read, parse and validate `directory`; raise `PolicyLoadError` on any problem."""
    import cedarpy  # here, not at the top: a sidecar without Cedar policies never loads it

    source, problems = read_policy_directory(directory)
    if source is None:
        raise PolicyLoadError(problems)
    schema_name, schema_text = source.schema_file
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as exc:
        raise PolicyLoadError([PolicyProblem(schema_name, f"invalid schema: {exc}")]) from exc
    policies, infos, problems = _compile_policies(source, schema)
    entities_json, known, parents, entity_problems = _normalize_entities(source)
    problems += entity_problems
    entities: cedarpy.Entities | None = None
    if entities_json is not None:
        try:
            entities = cedarpy.Entities.from_json_str(entities_json, schema)
        except ValueError as exc:
            problems.append(PolicyProblem(source.entities_file[0], f"invalid entities: {exc}"))
    if not problems and not policies:
        problems.append(PolicyProblem(str(directory), "the policy files hold no policies"))
    if problems or entities is None:
        raise PolicyLoadError(problems)
    header_names = header_names_read(policies.values())
    action_groups = _action_groups(entities)
    actions, refusal = request_actions(schema, entities, header_names)
    ancestors = _service_ancestors(parents)
    if not actions:
        raise PolicyLoadError([PolicyProblem(schema_name, refusal)])
    targets = {pid: resource_targets(est["resource"], ancestors) for pid, est in policies.items()}
    return PolicySnapshot(
        directory=directory,
        version=source.version,
        files=source.files,
        loaded_at=now,
        policies=infos,
        schema=schema,
        entities=entities,
        all_policies=policies,
        slices=SliceIndex(policies, targets),
        known_workloads=known,
        header_names=header_names,
        request_actions=actions,
        full_set_context_reads=context_reads(policies.values()),
        entity_parents={uid: tuple(ps) for uid, ps in parents.items()},
        action_ancestors=action_groups,
    )


def request_actions(
    schema: cedarpy.Schema, entities: cedarpy.Entities, header_names: frozenset[str]
) -> tuple[frozenset[str], str]:
    """The actions whose `appliesTo` accepts the request the sidecar builds, and why none
    does when the set is empty.

    Cedar itself decides: one request per schema action (the action entities come from the
    schema), with principal `Workload`, resource `Service` and a context holding every field
    the sidecar sends, validated against the schema. Because every context is built by the
    same code from typed fields, one that validates here validates for every request, so
    decisions can skip Cedar's per-request validation (fails closed: an action not in the
    result is denied before Cedar runs; action groups such as `read` are never requestable).
    """
    import cedarpy

    action_ids = sorted(_action_groups(entities))
    context = request_context(
        path="/",
        query="",
        host="",
        headers=[(name, "") for name in sorted(header_names)],
        source_address="127.0.0.1",
        tls_version="TLSv1.3",
        now=_PROBE_TIME,
        header_names=header_names,
    )
    empty = cedarpy.PolicySet.from_str("")
    accepted: set[str] = set()
    refusals: list[str] = []
    for action_id in action_ids:
        probe = {
            "principal": {"type": WORKLOAD_TYPE, "id": _PROBE_PRINCIPAL},
            "action": {"type": ACTION_TYPE, "id": action_id},
            "resource": {"type": SERVICE_TYPE, "id": "probe"},
            "context": context,
        }
        result = cedarpy.is_authorized(probe, empty, entities, schema)
        if result.decision == cedarpy.Decision.Deny and not result.diagnostics.errors:
            accepted.add(action_id)
        else:
            refusals.append(f"{action_id}: {'; '.join(result.diagnostics.errors)}")
    fields = ", ".join(sorted(CONTEXT_FIELDS))
    refusal = (
        "no action accepts the request the sidecar builds (principal Workload, resource "
        f"Service, context {{{fields}}}, headers as optional Strings): "
        + (" | ".join(refusals[:3]) or "the schema declares no actions")
    )
    return frozenset(accepted), refusal


def _action_groups(entities: cedarpy.Entities) -> dict[str, frozenset[str]]:
    """Each schema action (Cedar adds them to entities built with a schema) and the action
    groups it is in, transitively."""
    parents: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for entity in json.loads(str(entities)):
        uid = entity.get("uid", {})
        if uid.get("type") == ACTION_TYPE:
            parents[(ACTION_TYPE, str(uid["id"]))] = [
                (str(p.get("type")), str(p.get("id"))) for p in entity.get("parents", [])
            ]
    return {
        uid[1]: frozenset(name for _, name in ancestors_of(parents[uid], parents))
        for uid in parents
    }


def _compile_policies(
    source: PolicyDirectory, schema: cedarpy.Schema
) -> tuple[dict[str, dict[str, Any]], dict[str, PolicyInfo], list[PolicyProblem]]:
    import cedarpy

    policies: dict[str, dict[str, Any]] = {}
    infos: dict[str, PolicyInfo] = {}
    problems: list[PolicyProblem] = []
    shared: dict[object, Any] = {}  # one copy of each equal EST subtree across the set
    for name, text in source.policy_files:
        statements = split_statements(text)
        if not statements:
            problems.append(PolicyProblem(name, "file holds no policies (empty or half-written)"))
        for statement in statements:

            def problem(
                message: str, policy_id: str | None, st: Statement = statement, file: str = name
            ) -> None:
                problems.append(PolicyProblem(file, message, st.line, policy_id))

            if not statement.terminated:
                problem("policy does not end with ';'", statement.annotated_id)
                continue
            try:
                parsed = cedarpy.PolicySet.from_str(statement.text)
            except ValueError as exc:
                problem(f"does not parse: {exc}", statement.annotated_id)
                continue
            if len(parsed) != 1:
                problem("templates are not supported", statement.annotated_id)
                continue
            est = json.loads(cedarpy.policies_to_json_str(statement.text))["staticPolicies"]
            (body,) = est.values()
            body = _share(body, shared)
            policy_id = body.get("annotations", {}).get("id")
            if not isinstance(policy_id, str) or not _POLICY_ID_RE.fullmatch(policy_id):
                problem('needs an @id("...") of [A-Za-z0-9._:-], at most 128', policy_id)
                continue
            if policy_id in infos:
                first = infos[policy_id]
                problem(f"duplicate @id, first at {first.file}:{first.line}", policy_id)
                continue
            result = cedarpy.validate_policies(statement.text, schema)
            if not result.validation_passed:
                messages = [_POSITIONAL_ID_RE.sub(f"`{policy_id}`", e.error) for e in result.errors]
                for message in _merge_per_action(messages):
                    problem(message, policy_id)
                continue
            if reads_headers_whole(body):
                problem(
                    'read headers one at a time (context.headers has "x" && '
                    'context.headers["x"] == ...): only headers read by name are sent',
                    policy_id,
                )
                continue
            policies[policy_id] = body
            infos[policy_id] = PolicyInfo(policy_id, body["effect"], name, statement.line)
    return policies, infos, problems


def _share(value: Any, shared: dict[object, Any]) -> Any:
    """`value` (parsed JSON) with every string, list and object replaced by the first equal
    one met in this load, so equal subtrees of different policies are one object.

    The ESTs are kept for narrowing and never mutated (see `PolicySnapshot`); without
    sharing, 1,000 policies hold ~6 MB of small dicts and strings, with it ~1.5 MB. A
    container's key is built from its already shared children's identities, which
    `shared` keeps alive for the whole load, so the walk stays linear.
    """
    key: object
    if isinstance(value, str):
        return shared.setdefault(value, value)
    if isinstance(value, dict):
        items = [(shared.setdefault(k, k), _share(v, shared)) for k, v in value.items()]
        key = ("object", *[(k, _identity(v)) for k, v in items])
        return shared.setdefault(key, dict(items))
    if isinstance(value, list):
        elements = [_share(v, shared) for v in value]
        key = ("array", *[_identity(v) for v in elements])
        return shared.setdefault(key, elements)
    return value  # numbers, booleans, null: immutable and small


def _identity(value: Any) -> object:
    """A shared value's key part: its identity when it is a shared container or string,
    else its type and value (True and 1 are equal as dict keys, not as JSON)."""
    if isinstance(value, (str, dict, list)):
        return id(value)
    return (type(value), value)


def _merge_per_action(messages: list[str]) -> list[str]:
    """Cedar repeats a type error once per action the policy may apply to, in no fixed
    order; say it once, naming the actions (`... in context for actions GET, HEAD ...`)."""
    merged: dict[str, list[str]] = {}
    for message in messages:
        actions = _ACTION_IN_MESSAGE_RE.findall(message)
        if len(actions) == 1:
            merged.setdefault(_ACTION_IN_MESSAGE_RE.sub(_ACTIONS_SLOT, message), []).extend(actions)
        else:
            merged.setdefault(message, [])
    out = []
    for key, actions in merged.items():
        if not actions:
            out.append(key)
        elif len(set(actions)) == 1:
            out.append(key.replace(_ACTIONS_SLOT, f'Action::"{actions[0]}"'))
        else:
            out.append(key.replace(_ACTIONS_SLOT, f"actions {', '.join(sorted(set(actions)))}"))
    return out


def _normalize_entities(
    source: PolicyDirectory,
) -> tuple[
    str | None, frozenset[str], dict[tuple[str, str], list[tuple[str, str]]], list[PolicyProblem]
]:
    """Fill in each Workload's attributes and Namespace parent from its SPIFFE ID, so a
    workload listed here (for its groups) looks exactly like one built per request."""
    name, text = source.entities_file
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, frozenset(), {}, [PolicyProblem(name, f"invalid JSON: {exc.msg}", exc.lineno)]
    if not isinstance(document, list):
        return None, frozenset(), {}, [PolicyProblem(name, "must be a JSON list of entities")]
    problems: list[PolicyProblem] = []
    known: set[str] = set()
    parents: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for index, entry in enumerate(document):
        uid = entry.get("uid") if isinstance(entry, dict) else None
        if not isinstance(uid, dict) or not isinstance(uid.get("id"), str):
            problems.append(PolicyProblem(name, f"entry {index}: needs a uid with type and id"))
            continue
        if not isinstance(entry.get("parents", []), list):
            problems.append(PolicyProblem(name, f"entry {index}: parents must be a list"))
            continue
        if uid.get("type") == WORKLOAD_TYPE:
            try:
                derived = workload_entity(SpiffeId.parse(uid["id"]))
            except SpiffeIdError as exc:
                problems.append(PolicyProblem(name, f"entry {index}: workload id: {exc}"))
                continue
            attrs = entry.get("attrs") or {}
            if attrs and attrs != derived["attrs"]:
                problems.append(
                    PolicyProblem(
                        name,
                        f"entry {index}: attrs of {uid['id']} differ from those of its SPIFFE ID "
                        f"({derived['attrs']}); leave them out",
                    )
                )
                continue
            entry["attrs"] = derived["attrs"]
            entry["parents"] = [*derived["parents"], *entry.get("parents", [])]
            known.add(uid["id"])
        parents[(str(uid.get("type")), uid["id"])] = [
            (str(p.get("type")), str(p.get("id")))
            for p in entry.get("parents", [])
            if isinstance(p, dict)
        ]
    if problems:
        return None, frozenset(), {}, problems
    return json.dumps(document), frozenset(known), parents, []


def _service_ancestors(
    parents: Mapping[tuple[str, str], list[tuple[str, str]]],
) -> dict[str, frozenset[tuple[str, str]]]:
    result: dict[str, frozenset[tuple[str, str]]] = {}
    for uid in parents:
        if uid[0] != "Service":
            continue
        seen: set[tuple[str, str]] = set()
        stack = list(parents[uid])
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(parents.get(parent, ()))
        result[uid[1]] = frozenset(seen)
    return result
