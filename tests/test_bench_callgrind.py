"""The instruction counter behind `scripts/bench.py ca-instructions`
(scripts/benchlib/callgrind.py): a real leaf-signing loop under valgrind gives a
per-leaf count in the right range, dumps are read by their number, and a missing valgrind,
a file that is not callgrind output and bad loop arguments are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.benchlib import callgrind
from scripts.benchlib.callgrind import CallgrindError

pytestmark = pytest.mark.integration

SCRIPT = Path(callgrind.__file__)


@pytest.mark.integration
def test_a_signing_loop_under_callgrind_counts_one_leaf() -> None:
    # Two short real runs under valgrind (~25 s each, nearly all of it start-up); their
    # difference is twenty leaves, enough to drown run-to-run differences of start-up
    # and shutdown (~1 M instructions at most).
    per_leaf = callgrind.loop_instructions("sign", 2, 22)
    # Building and signing one P-256 leaf is ~0.6 M instructions here; the bounds leave
    # room for other library versions but not for a count of start-up or of nothing.
    assert 100_000 < per_leaf < 5_000_000


def test_latest_total_reads_the_highest_numbered_dump(tmp_path: Path) -> None:
    for number, total in ((1, 5), (2, 7), (10, 11)):
        (tmp_path / f"server.42.{number}").write_text(f"events: Ir\nsummary: {total}\n")
    (tmp_path / "server.43.99").write_text("summary: 99\n")  # another process
    assert callgrind.latest_total(tmp_path, 42) == 11


def test_no_dump_and_a_file_without_totals_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CallgrindError, match="no callgrind dump of process 7"):
        callgrind.latest_total(tmp_path, 7)
    stray = tmp_path / "server.7.1"
    stray.write_text("not callgrind output\n")
    with pytest.raises(CallgrindError, match=r"server\.7\.1: no 'summary:'"):
        callgrind.latest_total(tmp_path, 7)


def test_missing_valgrind_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CallgrindError, match="valgrind and callgrind_control not found"):
        callgrind.require_valgrind()


@pytest.mark.parametrize(("kind", "short", "long"), [("bogus", 1, 2), ("raw", 3, 3), ("raw", 0, 2)])
def test_bad_loop_arguments_are_refused(kind: str, short: int, long: int) -> None:
    with pytest.raises(ValueError, match="iterations"):
        callgrind.loop_instructions(kind, short, long)


def test_the_loop_script_refuses_an_unknown_kind() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "bogus", "3"], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "usage: callgrind.py raw|parse|sign N" in done.stderr


def test_the_bench_section_without_valgrind_exits_1_naming_it(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    done = subprocess.run(
        [sys.executable, str(bench), "ca-instructions"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 1
    assert "bench.py ca-instructions: valgrind and callgrind_control not found" in done.stderr
    assert "Traceback" not in done.stderr
