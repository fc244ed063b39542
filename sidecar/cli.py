"""``mesh-sidecar``: run a sidecar, check its config, or work with policies.

Exit codes: 0 ok, 1 config or identity error (the message names the file and key),
2 usage error. Logs are JSON lines on stderr (text on a terminal), see ``[log]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mesh_ca.version import installed_version

__all__ = ["main"]

EXIT_OK, EXIT_CONFIG, EXIT_USAGE = 0, 1, 2


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-sidecar", description="meshgate sidecar: mTLS on every hop."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run the sidecar")
    run.add_argument("--config", required=True, metavar="FILE.toml", help="sidecar config file")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE.toml")
    commands.add_parser(
        "policy", help="policy tools (see: mesh-sidecar policy --help)", add_help=False
    )
    return parser


def _run(config_path: str) -> int:
    import trio

    from sidecar.app import run
    from sidecar.config import ConfigError, load_config
    from sidecar.identity.static_files import StaticIdentityError
    from sidecar.logs import LogSetupError, setup_logging
    from sidecar.policy_runtime import PolicyStartError

    setup_logging()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _say(f"mesh-sidecar: {exc}")
        return EXIT_CONFIG
    try:
        setup_logging(config.log)
    except LogSetupError as exc:
        _say(f"mesh-sidecar: {config_path}: {exc}")
        return EXIT_CONFIG
    try:
        if config.workers > 1:
            from sidecar.workers import supervise

            return trio.run(supervise, config, config_path)
        return trio.run(run, config)
    except (StaticIdentityError, PolicyStartError, NotImplementedError, BaseExceptionGroup) as exc:
        errors = _leaves(exc)
        refusals = StaticIdentityError | PolicyStartError | NotImplementedError
        if not all(isinstance(e, refusals) for e in errors):
            raise
        for error in errors:
            _say(f"mesh-sidecar: {config_path}: {error}")
        return EXIT_CONFIG


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _check(path: str) -> int:
    from sidecar.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        _say(f"mesh-sidecar: {exc}")
        return EXIT_CONFIG
    mode = "static identity files" if config.identity.static else "bootstrap from the CA"
    sys.stdout.write(
        f"{path}: ok ({config.identity.spiffe_id}, {mode}, "
        f"{'1 inbound' if config.inbound else 'no inbound'}, {len(config.outbound)} outbound)\n"
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
