"""``mesh-sidecar``: run a sidecar, check its config, or work with policies.

Exit codes (`meshgate.exit_codes`): 0 ok (also after a drain), 1 the config file does not
load or validate, 2 usage, 3 a file named in the config is missing, unreadable or invalid,
4 ``identity.state_dir`` unusable, 5 a listen address cannot be bound, 6 the policy
directory does not load or validate. Every start-up failure is one line on stderr naming
the config file, key and value. Logs are JSON lines on stderr (text on a terminal), see
``[log]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from meshgate.exit_codes import EXIT_CODES_HELP, ExitCode, StartupError
from meshgate.version import VersionAction

__all__ = ["main", "run_reporting_startup_errors"]

EXIT_OK, EXIT_CONFIG, EXIT_USAGE = ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-sidecar",
        description="meshgate sidecar: mTLS on every hop.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run the sidecar", epilog=EXIT_CODES_HELP)
    run.add_argument("--config", required=True, metavar="FILE.toml", help="sidecar config file")
    check = commands.add_parser(
        "check-config",
        help="validate a config file and every file it names (identity files, key against "
        "certificate, bundle, state_dir, policy directory) and exit; binds nothing, "
        "contacts no CA",
        epilog=EXIT_CODES_HELP,
    )
    check.add_argument("file", metavar="FILE.toml")
    commands.add_parser(
        "policy", help="policy tools (see: mesh-sidecar policy --help)", add_help=False
    )
    return parser


def _run(config_path: str) -> int:
    from datetime import UTC, datetime

    import trio

    from sidecar.app import run
    from sidecar.config import ConfigError, load_config
    from sidecar.observe.logs import LogSetupError, setup_logging
    from sidecar.preflight import preflight

    setup_logging()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _say(f"mesh-sidecar: {exc}")
        return EXIT_CONFIG
    try:
        preflight(config, datetime.now(UTC))  # the checks check-config makes, first
    except StartupError as exc:
        _say(f"mesh-sidecar: {config_path}: {' '.join(str(exc).split())}")
        return int(exc.code)
    try:
        setup_logging(config.log)
    except LogSetupError as exc:  # checked above; a race with the file system
        _say(f"mesh-sidecar: {config_path}: {exc}")
        return ExitCode.FILE

    def serve() -> int:
        if config.workers > 1:
            from sidecar.workers import supervise

            return trio.run(supervise, config, config_path)
        return trio.run(run, config)

    return run_reporting_startup_errors(serve, config_path)


def run_reporting_startup_errors(serve: Callable[[], int], config_path: str | Path) -> int:
    """`serve()`, but a start-up failure is one line on stderr (naming the key and value)
    and its exit code, never a traceback. Anything else is a bug and keeps its traceback."""
    from sidecar.identity.static_files import StaticIdentityError
    from sidecar.policy.live import PolicyStartError

    try:
        return serve()
    except KeyboardInterrupt:  # SIGINT before the signal handlers were installed
        return 130
    except BaseException as exc:
        known: list[tuple[int, str]] = []
        for error in _leaves(exc):
            if isinstance(error, StartupError):
                known.append((error.code, str(error)))
            elif isinstance(error, StaticIdentityError):
                known.append((ExitCode.FILE, str(error)))
            elif isinstance(error, PolicyStartError):
                known.append((ExitCode.POLICY, str(error)))
            elif isinstance(error, NotImplementedError):
                known.append((ExitCode.FAILED, str(error)))
            elif not isinstance(error, KeyboardInterrupt):
                raise
        for _, message in dict.fromkeys(known):
            _say(f"mesh-sidecar: {config_path}: {' '.join(message.split())}")
        return known[0][0] if known else 130


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _check(path: str) -> int:
    from datetime import UTC, datetime

    from sidecar.config import ConfigError, load_config
    from sidecar.preflight import preflight

    try:
        config = load_config(path)
    except ConfigError as exc:
        _say(f"mesh-sidecar: {exc}")
        return EXIT_CONFIG
    try:
        preflight(config, datetime.now(UTC))
    except StartupError as exc:
        _say(f"mesh-sidecar: {path}: {' '.join(str(exc).split())}")
        return int(exc.code)
    mode = "static identity files" if config.identity.static else "bootstrap from the CA"
    policy = ""
    if config.policy is not None:
        where = config.policy.dir
        policy = f", policy set in {where}" if where else ", policies from the control plane"
    sys.stdout.write(
        f"{path}: ok ({config.identity.spiffe_id}, {mode}, "
        f"{'1 inbound' if config.inbound else 'no inbound'}, {len(config.outbound)} outbound"
        f"{policy}); not checked: listen addresses and the CA\n"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["policy"]:
        from sidecar.policy.cli import policy_main  # type: ignore[import-not-found, unused-ignore]

        return int(policy_main(args_in[1:]))
    try:
        args = _parser().parse_args(args_in)
    except SystemExit as exc:  # argparse: --help exits 0, usage errors exit 2
        return int(exc.code or 0)
    if args.command == "run":
        return _run(args.config)
    return _check(args.file)


if __name__ == "__main__":
    sys.exit(main())
