"""The README's quickstart works as written: every command runs, in order, with real processes.

The blocks between ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->`` are
extracted: each fenced ``bash`` block is run (all in one bash process, as a reader's one
terminal, so ``cd``, ``export`` and background jobs carry over), and each block preceded by
``<!-- file: PATH -->`` is written to PATH at that point (sidecar configs are checked with
``mesh-sidecar check-config`` before the first ``mesh-sidecar run``: it reads every file
they name, policies included). The run happens in a temporary "clone" (symlinks to
``scripts``, ``policies`` and the test's virtualenv), and every ``127.0.0.1:PORT`` of the
README is replaced by a free port, so nothing lands in the repository and no fixed port is
used. Each command's output is checked against what the README says it shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.config import load_config
from tests.demo_clone import installed_venv
from tests.procs import ROOT, free_port

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
_FILE = re.compile(r"<!--\s*file:\s*(\S+)\s*-->")
_FENCE = re.compile(r"^```(\w*)\s*$")
_PORT = re.compile(r"127\.0\.0\.1:(\d{2,5})\b")

# (a piece of the command, what its output must match): one entry per README command.
EXPECT: list[tuple[str, str]] = [
    ("bootstrap-ca.sh example.org quickstart/ca", r"created CA for trust domain example\.org"),
    ("export PATH=", r"^$"),
    ("cd quickstart", r"^$"),
    ("token create --dir ca --spiffe-id spiffe://example.org/ns/shop/svc/orders", r"valid until"),
    ("token create --dir ca --spiffe-id spiffe://example.org/ns/shop/svc/web", r"valid until"),
    ("mesh-ca status --dir ca", r"tokens\s+2 outstanding"),
    ("mkdir -p ca/policies", r"^$"),
    ("cp ../policies/mesh.cedarschema", r"^$"),
    ("entities.json", r"^$"),
    ("[control]", r"^$"),
    ("policy validate ca/policies", r"(?i)ok|valid"),
    ("policy test ca/policies", r"(?i)2 passed|passed: 2|2/2"),
    ("policy explain ca/policies", r"(?s)DENY.*no-delete.*exit status 1: deny"),
    ("mesh-ca serve --dir ca", r"^$"),
    ("check-config orders.toml", r"orders\.toml: ok \(spiffe://example\.org/ns/shop/svc/orders"),
    ("check-config web.toml", r"web\.toml: ok \(spiffe://example\.org/ns/shop/svc/web"),
    ("mkdir -p site/orders", r"^$"),
    ("http.server", r"^$"),
    ("run --config orders.toml", r"^$"),
    ("run --config web.toml", r"^$"),
    ("/readyz", r'"ready": true'),  # orders' admin
    ("/readyz", r'"ready": true'),  # web's admin
    ("curl -s http://", r'\{"order": 42, "state": "paid"\}'),
    ("-X DELETE", r"^403$"),
    (
        "curl -sSk https://",
        r"(?s)certificate required.*refused at the TLS handshake \(curl exit 56\)",
    ),
    ("tail -n 1 orders-access.log", r'"decision":\s*"deny".*"no-delete"'),
    ("/certificate", r'"spiffe_id": "spiffe://example\.org/ns/shop/svc/orders"'),
    ("/policies", r'"version"'),
    ("/metrics", r'meshgate_authz_decisions_total\{policy="no-delete",result="deny"\} 1\.0'),
    (
        "mesh-ca endpoints list",
        r"(?s)orders.*127\.0\.0\.1:\d+ .*spiffe://example\.org/ns/shop/svc/orders",
    ),
    ("mesh-ca policy status", r"(?s)spiffe://example\.org/ns/shop/svc/orders"),
    ("mesh-ca check --admin", r"(?s)✔ sidecars_ready.*all checks passed"),
    ("mesh-ca mesh stat", r"orders\s+healthy\s+1/1"),
    ("sleep 5", r"^$"),
    (
        "mesh-ca mesh edges",
        r"(?s)unknown\s+orders\s+inbound\s+0\s.*web\s+orders\s+inbound\s+2\s+100\.00%",
    ),
    ("mesh-ca mesh top", r'"source": "web",\s+"destination": "orders"'),
    ("/certificate", r'"serial": "[0-9a-f]+"'),  # 7. before
    ("sleep 20", r"^$"),
    ("/certificate", r'"serial": "[0-9a-f]+"'),  # 7. after
    ("mesh-ca revoke", r"(?i)revoked"),
    ("sleep 5", r"^$"),
    ("curl -s -o /dev/null", r"^50[23]$"),
    ("mesh-ca status --dir ca", r"revocations\s+1\s+spiffe://example\.org/ns/shop/svc/web"),
    ("kill $(jobs -p)", r"^$"),
]


@dataclass
class Block:
    kind: str  # "bash", or the language of a file block
    text: str
    file: str | None = None


def quickstart_blocks(markdown: str) -> list[Block]:
    """The fenced blocks between the quickstart markers, with the file each one names."""
    begin, end = (
        markdown.index("<!-- quickstart:begin -->"),
        markdown.index("<!-- quickstart:end -->"),
    )
    blocks: list[Block] = []
    pending_file: str | None = None
    lines = iter(markdown[begin:end].splitlines())
    for line in lines:
        if match := _FILE.search(line):
            pending_file = match.group(1)
        elif match := _FENCE.match(line):
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            blocks.append(Block(match.group(1), "\n".join(body) + "\n", pending_file))
            pending_file = None
    return blocks


def commands(block: Block) -> list[str]:
    return [line for line in block.text.splitlines() if line.strip() and not line.startswith("#")]


def script(blocks: list[Block]) -> str:
    """One bash script: a marker before each command, file blocks as quoted heredocs."""
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    n = 0
    configs: list[str] = []  # checked before the first run: check-config reads every file
    for block in blocks:
        if block.file:
            out += [
                f"cat > {block.file} <<'QUICKSTART_EOF'",
                block.text.rstrip("\n"),
                "QUICKSTART_EOF",
            ]
            if block.kind == "toml" and "[identity]" in block.text:
                configs.append(block.file)
            continue
        assert block.kind == "bash", f"a {block.kind!r} block without <!-- file: ... -->"
        for command in commands(block):
            if "mesh-sidecar run" in command:
                out += [f"mesh-sidecar check-config {c} > /dev/null" for c in configs]
                configs = []
            out += [f"echo '@@cmd {n}@@'", command]
            n += 1
    return "\n".join(out) + "\n"


def fake_clone(tmp: Path) -> None:
    """A directory that looks like a clone with .venv set up, without touching the repo."""
    for name in ("scripts", "policies"):
        (tmp / name).symlink_to(ROOT / name)
    installed_venv(tmp / ".venv")


def test_the_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert "\n    bash scripts/demo.sh\n" in text
    assert "\n    bash scripts/test.sh\n" in text
    assert "<!-- quickstart:begin -->" in text
    assert "<!-- quickstart:end -->" in text


def test_every_readme_quickstart_command_works_as_written(tmp_path: Path) -> None:
    markdown = README.read_text()
    blocks = quickstart_blocks(markdown)
    ports = {p for block in blocks for p in _PORT.findall(block.text)}
    assert len(ports) >= 6, ports
    mapping = {port: str(free_port()) for port in ports}
    for block in blocks:
        for old, new in mapping.items():
            block.text = re.sub(rf"(?<![\d.]){old}(?!\d)", new, block.text)
    every = [c for b in blocks if not b.file for c in commands(b)]
    assert len(every) == len(EXPECT), f"README has {len(every)} commands, EXPECT {len(EXPECT)}"
    for command, (piece, _) in zip(every, EXPECT, strict=True):
        assert piece in command, f"command {command!r} is not the expected {piece!r}"

    fake_clone(tmp_path)
    (tmp_path / "quickstart.sh").write_text(script(blocks))
    process = subprocess.Popen(
        ["bash", "quickstart.sh"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        start_new_session=True,  # the README's background jobs share this process group
    )
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything the script left behind
    pieces = re.split(r"^@@cmd (\d+)@@$", output, flags=re.MULTILINE)
    outputs = {int(n): text.strip() for n, text in zip(pieces[1::2], pieces[2::2], strict=True)}
    last = max(outputs, default=-1)
    assert process.returncode == 0, (
        f"quickstart failed at command {last}: {every[last] if last >= 0 else '(setup)'}\n{output}"
    )
    assert len(outputs) == len(every)
    for n, (command, (_, pattern)) in enumerate(zip(every, EXPECT, strict=True)):
        got = outputs[n]
        if pattern == r"^$":
            assert got == "", f"{command!r} printed {got!r}"
        else:
            assert re.search(pattern, got, re.MULTILINE), f"{command!r} printed:\n{got}"

    # 7. Rotate: the serial changed while the reader slept.
    serials = [outputs[n] for n, c in enumerate(every) if "/certificate | grep" in c]
    assert len(serials) == 2
    assert serials[0] != serials[1], serials

    # The files the reader saved are what the sidecars loaded.
    work = tmp_path / "quickstart"
    for block in blocks:
        if block.file:
            assert (work / block.file).read_text() == block.text
    for name in ("orders", "web"):
        config = load_config(work / f"{name}.toml")
        assert str(config.identity.spiffe_id) == f"spiffe://example.org/ns/shop/svc/{name}"
    denied = [json.loads(line) for line in (work / "orders-access.log").read_text().splitlines()]
    assert [line["status"] for line in denied if line["method"] == "DELETE"] == [403]
    # The app never saw the DELETE, nor anything after web was revoked.
    app_log = (work / "app.log").read_text()
    assert "DELETE" not in app_log
    assert app_log.count("GET /orders/42") == 1


@pytest.mark.parametrize("piece", ["kill $(jobs -p)", "mesh-ca revoke", "sleep 20"])
def test_expectations_name_commands_that_exist(piece: str) -> None:
    """Guards the EXPECT table itself: each piece matches a README command."""
    every = [c for b in quickstart_blocks(README.read_text()) if not b.file for c in commands(b)]
    assert any(piece in command for command in every)
