"""Coverage-guided fuzzing of meshgate's parsers, with a time budget.

    .venv/bin/python scripts/fuzz.py TARGET --seconds 60        # one target (atheris)
    .venv/bin/python scripts/fuzz.py all --seconds 5            # each target in turn
    .venv/bin/python scripts/fuzz.py all --seconds 5 --engine hypothesis
    .venv/bin/python scripts/fuzz.py TARGET --merge --work DIR   # keep a run's finds

Targets and their invariants are in tests/fuzz/targets.py (http_request, http_response,
ca_request, path, spiffe_id, bundle, csr). The engine is atheris (libFuzzer for Python,
a dev dependency), seeded from the committed corpus tests/fuzz/corpus/<target>/ and
writing what it finds to a scratch directory (--work DIR: DIR/<target>; default a
temporary one), so a run never changes the committed corpus; --merge --work DIR/<target>
copies that run's kept inputs into it. A crash or a broken
invariant stops the run, leaves the input in the scratch directory (crash-*) and exits
non-zero. `--engine hypothesis` runs the same targets from random and corpus-mutated
inputs for the same budget (no coverage feedback), for machines without atheris.
Each target runs in its own process, so one target's instrumentation cannot slow another.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
NAMES = ("http_request", "http_response", "ca_request", "path", "spiffe_id", "bundle", "csr")
# Per-input limits: an input that takes longer is a hang, bigger ones are not interesting.
TIMEOUT_SECONDS = 10
MAX_LEN = 8192
_INNER = "MESHGATE_FUZZ_INNER_TARGET"  # set for the runs libFuzzer's merge starts itself
# Packages atheris instruments for coverage: every package whose code a target reaches.
# A package left out is fuzzed blind (the relayout moved the parsers to `meshgate`, and
# until it was added here the fuzzer saw 11 edges of the path target instead of ~70).
INSTRUMENTED = ("meshgate", "sidecar", "mesh_ca", "tests.fuzz")
# atheris instruments Python bytecode: the mypyc build of meshgate/http (meshgate/native.py)
# would be fuzzed blind, so the fuzzer and the children it starts load the Python modules.
os.environ["MESHGATE_HTTP_BUILD"] = "pure"


def _atheris_child(target: str, seconds: int, work: Path, *, merge: bool = False) -> int:
    """Run one target under atheris in this process (the child). With `merge`, do not
    fuzz: fold the inputs in `work` that add coverage into the committed corpus."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        from tests.fuzz.targets import TARGETS
    function = TARGETS[target]
    limits = [f"-timeout={TIMEOUT_SECONDS}", f"-max_len={MAX_LEN}"]
    if merge:
        # libFuzzer's merge: of the inputs in `work`, only those that reach coverage the
        # corpus does not are copied into it (named by their SHA-1). It re-runs this
        # program with its own flags through the shell: the first word runs this file
        # under this interpreter, and the variable tells that run which target it is.
        os.environ[_INNER] = target
        runner = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)}"
        args = [runner, "-merge=1", str(CORPUS / target), str(work), *limits]
    else:
        work.mkdir(parents=True, exist_ok=True)
        args = [
            sys.argv[0],
            str(work),  # new finds go here (the first directory)
            str(CORPUS / target),  # read only: seeds
            f"-max_total_time={seconds}",
            *limits,
            f"-artifact_prefix={work}/",
            "-print_final_stats=1",
        ]
    atheris.Setup(args, function)
    atheris.Fuzz()
    return 0  # atheris exits the process itself


def _libfuzzer_inner(target: str) -> int:
    """A run libFuzzer started itself (merge mode): its flags are all of argv."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        from tests.fuzz.targets import TARGETS
    atheris.Setup(sys.argv, TARGETS[target])
    atheris.Fuzz()
    return 0


def _merge(target: str, work: Path) -> int:
    """Fold a run's finds into the committed corpus, keeping only inputs that add coverage
    (a 30-minute run leaves hundreds of inputs in `work`, most of them superseded by
    smaller ones). Crash, timeout and leak artifacts are left for a person to look at."""
    corpus = CORPUS / target
    before = {p.name for p in corpus.iterdir()}
    with tempfile.TemporaryDirectory(prefix=f"meshgate-merge-{target}-") as finds:
        for path in work.iterdir():
            if path.is_file() and not path.name.startswith(("crash-", "timeout-", "oom-", "leak-")):
                (Path(finds) / path.name).write_bytes(path.read_bytes())
        argv = [sys.executable, __file__, target, "--work", finds, "--child", "--merge"]
        done = subprocess.run(
            argv, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False
        )
    added = len({p.name for p in corpus.iterdir()} - before)
    print(f"merge {target}: {added} inputs that add coverage added to {corpus}", file=sys.stderr)
    return done.returncode


def _hypothesis_child(target: str, seconds: int) -> int:
    """The same target from hypothesis-made inputs for `seconds` (no coverage feedback)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sys.path.insert(0, str(ROOT))
    from tests.fuzz.strategies import inputs_for
    from tests.fuzz.targets import TARGETS

    function = TARGETS[target]
    runs = 0

    @settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        nonlocal runs
        runs += 1
        function(data.draw(inputs_for(target)))

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # fresh random batches until the budget is spent
        run()
    print(f"{target}: {runs} inputs in {seconds} s, no failure", file=sys.stderr)
    return 0


def _run_one(target: str, seconds: int, engine: str, work: Path | None) -> int:
    """Run `target` in a child process; its exit status."""
    scratch = work / target if work else Path(tempfile.mkdtemp(prefix=f"meshgate-fuzz-{target}-"))
    argv = [sys.executable, __file__, target, "--seconds", str(seconds), "--engine", engine]
    argv += ["--work", str(scratch), "--child"]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False)
    took = time.monotonic() - started
    outcome = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    print(f"fuzz {target}: {outcome} after {took:.0f} s; scratch {scratch}", file=sys.stderr)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    inner = os.environ.get(_INNER)
    if inner in NAMES and any(a.startswith("-merge") for a in sys.argv[1:]):
        return _libfuzzer_inner(inner)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=(*NAMES, "all"))
    parser.add_argument("--seconds", type=int, default=60, help="time budget per target")
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default="atheris")
    parser.add_argument("--work", type=Path, help="scratch directory for finds and crashes")
    parser.add_argument("--merge", action="store_true", help="fold --work finds into the corpus")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.engine == "hypothesis":
            return _hypothesis_child(args.target, args.seconds)
        return _atheris_child(args.target, args.seconds, args.work, merge=args.merge)
    if args.merge:
        if args.target == "all" or args.work is None:
            parser.error("--merge needs one target and the --work directory of its run")
        return _merge(args.target, args.work)
    targets = NAMES if args.target == "all" else (args.target,)
    failed = [t for t in targets if _run_one(t, args.seconds, args.engine, args.work)]
    if failed:
        print(f"fuzz: failures in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
