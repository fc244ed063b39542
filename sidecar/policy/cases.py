"""Policy test cases (`tests.toml` next to the policies): request in, expected decision out.

```toml
[[case]]
name = "web may read an order"
principal = "spiffe://example.org/ns/shop/svc/web"
action = "GET"
resource = "orders"
path = "/orders/42"
expect = "allow"                 # or "deny"
policies = ["web-reads-orders"]  # optional: the determining policies, exactly
```
Optional request fields: `query`, `host`, `headers` (a table), `source_address`
(default 127.0.0.1), `tls_version` (default TLSv1.3), `time` (a TOML datetime with offset;
default 2024-01-01T12:00:00Z, so results do not depend on when the tests run).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshgate.identity import SpiffeId, SpiffeIdError
from sidecar.policy.decision import AccessRequest, Decision, decide
from sidecar.policy.snapshot import PolicySnapshot
from sidecar.policy.source import PolicyProblem

__all__ = ["CaseResult", "PolicyCase", "load_cases", "run_cases"]

DEFAULT_TIME = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


class PolicyCase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    principal: str
    action: str
    resource: str
    expect: Literal["allow", "deny"]
    policies: tuple[str, ...] | None = None
    path: str = ""
    query: str = ""
    host: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    source_address: str = "127.0.0.1"
    tls_version: str = "TLSv1.3"
    time: datetime = DEFAULT_TIME

    @field_validator("principal")
    @classmethod
    def _spiffe_id(cls, value: str) -> str:
        try:
            SpiffeId.parse(value)
        except SpiffeIdError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs an offset, e.g. 2024-01-01T02:00:00Z")
        return value

    def request(self) -> AccessRequest:
        return AccessRequest(
            principal=SpiffeId.parse(self.principal),
            action=self.action,
            service=self.resource,
            source_address=self.source_address,
            now=self.time,
            path=self.path,
            query=self.query,
            host=self.host,
            headers=tuple(self.headers.items()),
            tls_version=self.tls_version,
        )


@final
@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        if (self.case.expect == "allow") != self.decision.allowed:
            return False
        expected = self.case.policies
        return expected is None or tuple(sorted(expected)) == self.decision.policy_ids


def load_cases(path: Path) -> list[PolicyCase]:
    """Parse a tests file; raises `ValueError` whose message names the file, case and key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(str(PolicyProblem(path.name, f"cannot read: {exc}"))) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(PolicyProblem(path.name, f"invalid TOML: {exc}"))) from exc
    unknown = set(document) - {"case"}
    if unknown:
        raise ValueError(f"{path.name}: unknown top-level keys {sorted(unknown)} (use [[case]])")
    raw_cases = document.get("case", [])
    if not raw_cases:
        raise ValueError(f"{path.name}: no [[case]] entries")
    cases: list[PolicyCase] = []
    for index, raw in enumerate(raw_cases):
        label = f"case {index + 1} ({raw.get('name', 'unnamed')!r})"
        try:
            cases.append(PolicyCase.model_validate(raw))
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(f"{path.name}: {label}: {details}") from exc
    return cases


def run_cases(snapshot: PolicySnapshot, cases: list[PolicyCase]) -> list[CaseResult]:
    return [CaseResult(case, decide(snapshot, case.request())) for case in cases]
