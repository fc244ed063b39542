"""The Cedar request context, built from typed fields, and which parts of it policies read.

Parsing the context is most of what a Cedar call costs (the `ip` extension value alone
about a third), so a decision sends only the top-level attributes that some policy of its
slice reads. Leaving an attribute out can only deny, never allow: a policy that reads a
missing attribute errors, and any evaluation error denies. The one way to observe an
absent attribute without an error is `has`, so `has` counts as a read; any other use of
`context` as a whole value makes the whole context needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "CONTEXT_FIELDS",
    "context_reads",
    "header_names_read",
    "reads_headers_whole",
    "request_context",
]

# Every attribute the sidecar can send; the schema's RequestContext must declare exactly these.
CONTEXT_FIELDS: Final = frozenset(
    {"path", "query", "host", "headers", "source_address", "tls_version", "time"}
)
_CONTEXT_VAR: Final = {"Var": "context"}


def request_context(
    *,
    path: str,
    query: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    source_address: str,
    tls_version: str,
    now: datetime,
    header_names: frozenset[str],
    keys: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The context as Cedar JSON; only `keys` (all fields when None).

    Headers: only those in `header_names` (the ones policies read, each declared in the
    schema), names lowercased, repeated values joined with ", ".
    """
    wanted = CONTEXT_FIELDS if keys is None else keys
    context: dict[str, Any] = {}
    if "path" in wanted:
        context["path"] = path
    if "query" in wanted:
        context["query"] = query
    if "host" in wanted:
        context["host"] = host.lower()
    if "headers" in wanted:
        selected: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            if key in header_names:
                selected[key] = f"{selected[key]}, {value}" if key in selected else value
        context["headers"] = selected
    if "source_address" in wanted:
        context["source_address"] = {"__extn": {"fn": "ip", "arg": source_address}}
    if "tls_version" in wanted:
        context["tls_version"] = tls_version
    if "time" in wanted:
        utc = now.astimezone(UTC)
        context["time"] = {
            "epoch_seconds": int(utc.timestamp()),
            "hour": utc.hour,
            "minute": utc.minute,
            "weekday": utc.isoweekday(),
        }
    return context


def context_reads(policies: Iterable[Mapping[str, Any]]) -> frozenset[str] | None:
    """Top-level context attributes that `policies` (Cedar JSON, EST) read via `.` or `has`;
    None when some policy uses `context` otherwise (then the whole context is sent)."""
    reads, whole = _reads_of(policies, _is_context)
    return None if whole else reads


def header_names_read(policies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Header names that some policy reads (`context.headers.x`, `has "x"`): only those go
    into the request, and validation guarantees the schema declares each of them."""
    return _reads_of(policies, _is_context_headers)[0]


def reads_headers_whole(policy: Mapping[str, Any]) -> bool:
    """Whether a policy uses `context.headers` other than one header at a time.

    Only headers read by name are sent, so `context.headers == {}` would always hold:
    the loader refuses such a policy rather than let it see a record that is never full.
    """
    return _reads_of((policy,), _is_context_headers)[1]


def _reads_of(
    policies: Iterable[Mapping[str, Any]], is_record: Callable[[Any], bool]
) -> tuple[frozenset[str], bool]:
    """The attributes of a record (`context`, `context.headers`) that the policies' EST
    conditions read one at a time (`.` or `has`), and whether one uses the record some other
    way (whole: compared, passed on), which is how they can be told apart in the tree."""
    reads: set[str] = set()
    whole = False

    def walk(node: Any) -> None:
        nonlocal whole
        if isinstance(node, dict):
            if is_record(node):
                whole = True  # reached only when not the `left` of a `.` / `has`
                return
            for key, value in node.items():
                if key in (".", "has") and isinstance(value, dict) and is_record(value.get("left")):
                    reads.add(str(value.get("attr")))
                    continue
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for est in policies:
        walk(est.get("conditions", []))
    return frozenset(reads), whole


def _is_context(node: Any) -> bool:
    return bool(node == _CONTEXT_VAR)


def _is_context_headers(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    inner = node.get(".")
    return (
        isinstance(inner, dict)
        and inner.get("attr") == "headers"
        and inner.get("left") == _CONTEXT_VAR
    )
