"""`mesh-sidecar policy init|validate|test|explain DIR`: the policy author's tools.

Exit codes: 0 valid / all tests pass / allowed; 1 invalid / a test failed / denied;
2 bad usage (argparse) or, for `explain`, a policy directory that does not load.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from meshgate.http.errors import HttpError
from meshgate.http.path import normalize_target
from meshgate.identity import SpiffeId, SpiffeIdError, TrustDomain
from sidecar.policy.cases import load_cases, run_cases
from sidecar.policy.decision import AccessRequest, Decision, decide
from sidecar.policy.loader import PolicyLoadError, load_snapshot
from sidecar.policy.snapshot import PolicySnapshot
from sidecar.policy.source import TESTS_FILE
from sidecar.policy.starter import StarterError, write_starter

__all__ = ["policy_main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-sidecar policy", description="Validate, test and explain Cedar policies."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="start a policy directory: schema, example, tests")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--service", required=True, help="the service these policies protect")
    init.add_argument("--trust-domain", default="example.org", help="for the examples")
    validate = sub.add_parser("validate", help="parse and validate DIR against its schema")
    validate.add_argument("directory", type=Path, metavar="DIR")
    validate.add_argument("--output", choices=["text", "json"], default="text")
    test = sub.add_parser("test", help=f"run the test cases of DIR ({TESTS_FILE})")
    test.add_argument("directory", type=Path, metavar="DIR")
    test.add_argument("--tests", type=Path, help=f"test file (default DIR/{TESTS_FILE})")
    test.add_argument("--output", choices=["text", "json"], default="text")
    explain = sub.add_parser("explain", help="decide one request and say why")
    explain.add_argument("directory", type=Path, metavar="DIR")
    explain.add_argument("--principal", required=True, help="peer SPIFFE ID")
    explain.add_argument("--action", required=True, help="HTTP method, or connect")
    explain.add_argument("--resource", required=True, help="destination service name")
    explain.add_argument(
        "--path",
        default="",
        help="request path as a client sends it (may carry ?query); normalized exactly as "
        "the sidecar does before deciding (empty: tcp mode, no path)",
    )
    explain.add_argument("--query", default="", help="query string (or give it in --path)")
    explain.add_argument("--host", default="")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    explain.add_argument("--source-address", default="127.0.0.1")
    explain.add_argument("--tls-version", default="TLSv1.3")
    explain.add_argument("--time", help="ISO 8601 time with offset (default: now)")
    return parser


def policy_main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    directory: Path = args.directory
    if args.command == "init":
        return _init(directory, args.service, args.trust_domain, out, err)
    now = datetime.now(UTC)
    try:
        snapshot = load_snapshot(directory, now)
    except PolicyLoadError as exc:
        for problem in exc.problems:
            err.write(f"{problem}\n")
        err.write(f"{directory}: {len(exc.problems)} problem(s); nothing loaded\n")
        return 2 if args.command == "explain" else 1
    as_json = getattr(args, "output", "text") == "json"
    if args.command == "validate":
        return _validate(snapshot, out, err, as_json=as_json)
    if args.command == "test":
        return _test(snapshot, args.tests or directory / TESTS_FILE, out, err, as_json=as_json)
    return _explain(snapshot, args, out, err)


def _init(directory: Path, service: str, trust_domain: str, out: TextIO, err: TextIO) -> int:
    try:
        written = write_starter(directory, TrustDomain.parse(trust_domain), service)
    except SpiffeIdError as exc:
        err.write(f"--trust-domain: {exc}\n")
        return 1
    except StarterError as exc:
        err.write(f"{exc}\n")
        return 1
    for path in written:
        out.write(f"wrote {path}\n")
    out.write(f"next: mesh-sidecar policy validate {directory}\n")
    out.write(f"      mesh-sidecar policy test {directory}\n")
    return 0


def _validate(snapshot: PolicySnapshot, out: TextIO, err: TextIO, *, as_json: bool = False) -> int:
    tests = snapshot.directory / TESTS_FILE
    if tests.exists():
        try:
            load_cases(tests)
        except ValueError as exc:
            err.write(f"{exc}\n")
            return 1
    if as_json:
        document = {
            "directory": str(snapshot.directory),
            "valid": True,
            "version": snapshot.version,
            "files": list(snapshot.files),
            "policies": len(snapshot.policies),
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    out.write(
        f"{snapshot.directory}: {len(snapshot.policies)} policies valid "
        f"({', '.join(snapshot.files)}), version {snapshot.version}\n"
    )
    return 0


def _test(
    snapshot: PolicySnapshot, tests: Path, out: TextIO, err: TextIO, *, as_json: bool = False
) -> int:
    try:
        cases = load_cases(tests)
    except ValueError as exc:
        err.write(f"{exc}\n")
        return 1
    results = run_cases(snapshot, cases)
    if as_json:
        rows = [
            {
                "name": r.case.name,
                "passed": r.passed,
                "expected": r.case.expect,
                "got": "allow" if r.decision.allowed else "deny",
                "reason": str(r.decision.reason),
                "policies": snapshot.describe(r.decision.policy_ids),
                "errors": [str(e) for e in r.decision.errors],
            }
            for r in results
        ]
        failures = sum(1 for r in rows if not r["passed"])
        document = {"passed": len(rows) - failures, "failed": failures, "cases": rows}
        out.write(json.dumps(document, indent=2) + "\n")
        return 1 if failures else 0
    failed = 0
    for result in results:
        if result.passed:
            out.write(f"PASS  {result.case.name}\n")
            continue
        failed += 1
        case, decision = result.case, result.decision
        got = "allow" if decision.allowed else "deny"
        out.write(f"FAIL  {case.name}: expected {case.expect}, got {got} ({decision.reason})\n")
        if case.policies is not None:
            out.write(f"      expected policies: {', '.join(sorted(case.policies)) or '(none)'}\n")
        _write_reasons(snapshot, decision, out, indent="      ")
    out.write(f"{len(results) - failed} passed, {failed} failed\n")
    return 1 if failed else 0


def _explain(snapshot: PolicySnapshot, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        principal = SpiffeId.parse(args.principal)
    except SpiffeIdError as exc:
        err.write(f"--principal: {exc}\n")
        return 2
    headers: list[tuple[str, str]] = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.write(f"--header {item!r}: expected NAME=VALUE\n")
            return 2
        headers.append((name, value))
    now = datetime.now(UTC)
    if args.time:
        try:
            now = datetime.fromisoformat(args.time)
        except ValueError as exc:
            err.write(f"--time: {exc}\n")
            return 2
        if now.tzinfo is None:
            err.write("--time: needs an offset, e.g. 2024-01-01T02:00:00+00:00\n")
            return 2
    path, query = args.path, args.query
    if path:
        # The live sidecar's own normalization (meshgate.http.path): what it would decide on.
        target = path if "?" in path or not query else f"{path}?{query}"
        try:
            normalized = normalize_target(target)
        except HttpError as exc:
            out.write(
                f"decision: DENY (rejected request)\npath: {target!r} is rejected before any "
                f"policy is asked: {exc.status_hint} {exc.reason}\n"
            )
            return 1
        path, query = normalized.path, normalized.query or ""
        sent = target.partition("?")[0]
        note = "" if normalized.path == sent else f" (normalized from {sent})"
        path_line = f"path: {normalized.path}{note}\n"
    else:
        path_line = ""
    request = AccessRequest(
        principal=principal,
        action=args.action,
        service=args.resource,
        source_address=args.source_address,
        now=now,
        path=path,
        query=query,
        host=args.host,
        headers=tuple(headers),
        tls_version=args.tls_version,
    )
    decision = decide(snapshot, request)
    verdict = "ALLOW" if decision.allowed else "DENY"
    out.write(f"decision: {verdict} ({decision.reason}), policy set {decision.version}\n")
    out.write(path_line)
    _write_reasons(snapshot, decision, out, indent="")
    return 0 if decision.allowed else 1


def _write_reasons(snapshot: PolicySnapshot, decision: Decision, out: TextIO, indent: str) -> None:
    described = snapshot.describe(decision.policy_ids)
    out.write(f"{indent}determining policies: {', '.join(described) or '(none)'}\n")
    for error in decision.errors:
        out.write(f"{indent}error: {error}\n")
