"""What the demo saw, as data: access-log rows grouped into the summary table, and its text form.

Pure functions over parsed JSON lines; no processes, no sockets. The table is built from the
inbound sidecars' access logs (the hop where Cedar decided), plus the refusals that never
reach an access log because they ended at the TLS handshake.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["HopRow", "format_table", "read_json_lines", "service_of", "summarize"]


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of `path` (a line an editor or a crash cut short is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            rows.append(value)
    return rows


def service_of(spiffe_id: str | None) -> str:
    """`web` for spiffe://TD/ns/shop/svc/web; the whole ID when it has no /svc/ part."""
    if not spiffe_id:
        return "(no certificate)"
    head, sep, tail = spiffe_id.rpartition("/svc/")
    return tail if sep and head else spiffe_id


@dataclass(frozen=True, slots=True)
class HopRow:
    caller: str
    callee: str
    method: str
    path: str
    status: str
    decision: str
    policies: str
    count: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    inbound_lines: Iterable[dict[str, Any]], refusals: Sequence[HopRow] = ()
) -> list[HopRow]:
    """Inbound access-log lines grouped by (caller, callee, method, path, status, decision,
    policies), in first-seen order, then the handshake refusals."""
    counts: Counter[tuple[str, str, str, str, str, str, str]] = Counter()
    for line in inbound_lines:
        if line.get("direction") != "inbound":
            continue
        key = (
            service_of(line.get("peer_id")),
            str(line.get("destination") or "?"),
            str(line.get("method") or "-"),
            str(line.get("path") or "-"),
            str(line.get("status") if line.get("status") is not None else "-"),
            str(line.get("decision") or "none"),
            ", ".join(line.get("policies") or []) or "-",
        )
        counts[key] += 1
    rows = [HopRow(*key, count=n) for key, n in counts.items()]
    return rows + list(refusals)


def format_table(rows: Sequence[HopRow]) -> str:
    header = ("caller → callee", "method", "path", "status", "decision", "deciding policy", "n")
    cells = [
        (
            f"{r.caller} → {r.callee}",
            r.method,
            r.path,
            r.status,
            r.decision,
            r.policies,
            str(r.count),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
