"""`mesh-sidecar policy validate|test|explain`: exit codes and what they print."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from sidecar.policy.cli import policy_main

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WEB = "spiffe://example.org/ns/shop/svc/web"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = policy_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_validate_accepts_the_shipped_policies() -> None:
    code, out, err = run("validate", str(POLICIES))
    assert code == 0, err
    assert "policies valid" in out


def test_validate_names_file_line_and_policy_id(policy_dir: Path) -> None:
    (policy_dir / "zz.cedar").write_text(
        '// header\n\n@id("bad-attr")\npermit (principal, action, resource)\n'
        'when { principal.team == "x" };\n\n@id("ok")\nforbid (principal, action, resource)\n'
        "when { context.path == };\n"
    )
    code, out, err = run("validate", str(policy_dir))
    assert code == 1
    assert out == ""
    assert "zz.cedar:3: policy 'bad-attr':" in err
    assert "team" in err
    assert "zz.cedar:7: policy 'ok': does not parse" in err
    assert "2 problem(s)" in err


def test_validate_requires_an_id_annotation(policy_dir: Path) -> None:
    (policy_dir / "anon.cedar").write_text("\npermit (principal, action, resource);\n")
    code, _, err = run("validate", str(policy_dir))
    assert code == 1
    assert "anon.cedar:2:" in err
    assert "@id" in err


def test_validate_rejects_a_broken_tests_file(policy_dir: Path) -> None:
    (policy_dir / "tests.toml").write_text('[[case]]\nname = "x"\nprincipal = "nope"\n')
    code, _, err = run("validate", str(policy_dir))
    assert code == 1
    assert "tests.toml: case 1 ('x')" in err
    assert "principal" in err


def test_test_passes_on_the_shipped_cases() -> None:
    code, out, err = run("test", str(POLICIES))
    assert code == 0, out + err
    assert " 0 failed" in out


def test_test_reports_a_failure_with_the_deciding_policies(policy_dir: Path) -> None:
    (policy_dir / "tests.toml").write_text(
        "[[case]]\n"
        'name = "web deletes an order"\n'
        f'principal = "{WEB}"\n'
        'action = "DELETE"\nresource = "orders"\npath = "/orders/1"\nexpect = "allow"\n'
        "[[case]]\n"
        'name = "web reads an order"\n'
        f'principal = "{WEB}"\n'
        'action = "GET"\nresource = "orders"\npath = "/orders/1"\nexpect = "allow"\n'
        'policies = ["some-other-policy"]\n'
    )
    code, out, _ = run("test", str(policy_dir))
    assert code == 1
    assert "FAIL  web deletes an order: expected allow, got deny (forbidden)" in out
    assert "determining policies: no-delete (forbid, guardrails.cedar:3)" in out
    assert "expected policies: some-other-policy" in out
    assert "web-reads-orders (permit, shop.cedar:3)" in out
    assert "0 passed, 2 failed" in out


def test_test_fails_on_an_invalid_policy_directory(policy_dir: Path) -> None:
    (policy_dir / "entities.json").write_text("[{")
    code, _, err = run("test", str(policy_dir))
    assert code == 1
    assert "entities.json:1: invalid JSON" in err


def test_explain_allowed_request() -> None:
    code, out, _ = run(
        "explain", str(POLICIES), "--principal", WEB, "--action", "GET",
        "--resource", "orders", "--path", "/orders/9",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("decision: ALLOW (allowed)")
    assert "web-reads-orders (permit, shop.cedar:3)" in out


def test_explain_denied_request_with_header() -> None:
    code, out, _ = run(
        "explain", str(POLICIES), "--principal", "spiffe://example.org/ns/shop/svc/orders",
        "--action", "POST", "--resource", "payments", "--path", "/charge",
        "--header", "X-Tenant=acme", "--source-address", "10.0.0.1",
    )  # fmt: skip
    assert code == 1
    assert out.startswith("decision: DENY (forbidden)")
    assert "no-tenant-override-on-payments (forbid, guardrails.cedar:" in out


def test_explain_default_deny_names_no_policy() -> None:
    code, out, _ = run(
        "explain", str(POLICIES), "--principal", WEB, "--action", "GET",
        "--resource", "payments", "--path", "/",
    )  # fmt: skip
    assert code == 1
    assert "DENY (no-permit)" in out
    assert "determining policies: (none)" in out


def test_explain_uses_the_given_time() -> None:
    base = ["explain", str(POLICIES), "--principal", "spiffe://example.org/ns/shop/svc/admin-console",
            "--action", "POST", "--resource", "payments", "--path", "/refunds/batch"]  # fmt: skip
    assert run(*base, "--time", "2024-03-01T02:00:00+00:00")[0] == 0
    assert run(*base, "--time", "2024-03-01T05:00:00+00:00")[0] == 1
    code, _, err = run(*base, "--time", "2024-03-01T02:00:00")
    assert code == 2
    assert "--time" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--principal", "https://web"], "--principal"),
        (["--principal", WEB, "--header", "novalue"], "--header 'novalue'"),
    ],
)
def test_explain_bad_flags_exit_2(extra: list[str], message: str) -> None:
    argv = ["explain", str(POLICIES), "--action", "GET", "--resource", "orders"]
    if "--principal" not in extra[0]:
        argv += ["--principal", WEB]
    code, _, err = run(*argv, *extra)
    assert code == 2
    assert message in err


def test_explain_on_an_invalid_directory_exits_2(tmp_path: Path) -> None:
    code, _, err = run(
        "explain", str(tmp_path), "--principal", WEB, "--action", "GET", "--resource", "orders"
    )
    assert code == 2
    assert "no *.cedar policy files" in err
