"""``mesh-ca``: create and run the mesh CA, issue SVIDs offline, manage tokens and revocations.

Every flag is validated before anything is written; usage errors name the flag and exit
2, operational errors (a missing CA, a wrong passphrase, a database error) exit 1;
``serve``'s start-up failures have their own codes (`meshgate.exit_codes`, ``--help``), and
so does an unusable PKCS#11 key store in any command (7, naming the ``keys.*`` key). Join
tokens go to stdout only, so scripts can capture them; nothing secret is ever logged.

Why one module: it is the one `argparse` tree of ``mesh-ca`` with one short
``_cmd_*`` function per subcommand and the flag checks they share; the work behind each
command lives in its own module (`ca_dir`, `issuance`, `store`, `keys_cli`, `server`).
Reading the whole command surface in one file is the point; a subcommand that grows
beyond parsing and printing belongs in a module of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from mesh_ca.api import RevokeRequest, reserved_revocation
from mesh_ca.ca_dir import (
    BUNDLE_PEM,
    INTERMEDIATE_CERT,
    ROOT_CERT,
    CaDirError,
    LoadedCa,
    init_ca_dir,
    load_ca_dir,
    read_passphrase,
)
from mesh_ca.config import (
    CONFIG_FILE,
    CaConfig,
    ConfigError,
    IssuanceConfig,
    StoreConfig,
    load_config,
)
from mesh_ca.control.cli import add_control_parsers, endpoints_main, policy_main
from mesh_ca.dashboard.cli import add_dashboard_parser, dashboard_main
from mesh_ca.duration import format_duration, parse_duration
from mesh_ca.federation.status import federation_lines, federation_status
from mesh_ca.issuance import (
    FLOOR_LEAF_TTL,
    MAX_LEAF_TTL,
    MIN_LEAF_TTL,
    IssuanceError,
    issue_leaf,
    make_csr,
)
from mesh_ca.keys_cli import add_keys_flags, keys_config
from mesh_ca.mesh_cli import add_mesh_parsers, check_main, guarded, mesh_main
from mesh_ca.root_cli import add_root_parser, print_slots, root_main, slots_status
from mesh_ca.rotation import RotationError, TrustState
from mesh_ca.rotation.keeper import published_bundle, signer_of
from mesh_ca.store import IssuedRecord, StateStore, StoreError, open_store
from mesh_ca.store.dbcli import add_db_parser, db_main
from mesh_ca.store.trust import trust_store
from mesh_ca.tokens import new_token
from meshgate.errors import MeshgateError
from meshgate.exit_codes import EXIT_CODES_HELP, StartupError
from meshgate.files import write_atomic_set
from meshgate.identity import (
    RESERVED_PATH_PREFIX,
    BundleError,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    load_pem_certificates,
)
from meshgate.keys import generate_key, private_key_pem
from meshgate.version import VersionAction

__all__ = ["add_serve_flags", "main"]

PROG = "mesh-ca"


class UsageError(MeshgateError):
    """A flag value is wrong; exit 2. The message starts with the flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")


class OperationError(MeshgateError):
    """The command could not be carried out; exit 1."""


# Argument types: argparse reports their errors as "argument --flag: message", exit 2.


def _arg_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = name
    return convert


def _serial(text: str) -> int:
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not a hexadecimal serial number") from None
    if value <= 0:
        raise ValueError(f"{text!r}: serial must be positive")
    return value


def _reason(text: str) -> str:
    """The API's rule for a revocation reason (`RevokeRequest.reason`), for the CLI too."""
    try:
        RevokeRequest(serial="1", reason=text)
    except ValidationError:
        raise ValueError(
            "at most 256 characters of printable text (no control characters)"
        ) from None
    return text


_spiffe_id_arg = _arg_type(SpiffeId.parse, "SPIFFE ID")
_reason_arg = _arg_type(_reason, "reason")
_trust_domain_arg = _arg_type(TrustDomain.parse, "trust domain")
_duration_arg = _arg_type(parse_duration, "duration")
_serial_arg = _arg_type(_serial, "serial")


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """Flags of ``mesh-ca serve`` beyond --dir/--listen/--passphrase-file (shared with
    ``python -m mesh_ca.server``)."""
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="info (default) writes one JSON access-log line a request to stderr, in batches "
        "every 0.2 s; warning turns the access log off",
    )
    p.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="plain-HTTP admin listener for /metrics and /healthz (loopback only; default "
        "server.admin_listen from ca.toml, none when empty; port 0 picks one)",
    )
    p.add_argument(
        "--admin-allow-remote",
        action="store_true",
        help="let --admin-listen bind a non-loopback address (no TLS, no authentication)",
    )
    p.add_argument(
        "--replica",
        default="",
        metavar="NAME",
        help="this replica's name, kept in the ledger rows it writes (default: none)",
    )
    handlers = p.add_mutually_exclusive_group()
    handlers.add_argument(
        "--inline-handlers",
        action="store_true",
        help="run store and signing on the event loop (the default with the SQLite store)",
    )
    handlers.add_argument(
        "--threaded-handlers",
        action="store_true",
        help="run store and signing in worker threads (the default with PostgreSQL, so "
        "database latency never stalls the event loop)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The meshgate SPIFFE certificate authority.", epilog=EXIT_CODES_HELP
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text)

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, required=True, help="the CA directory")

    def add_passphrase(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--passphrase-file",
            type=Path,
            help="file whose first line is the CA key passphrase (else $MESH_CA_PASSPHRASE)",
        )

    p = add("init", "Create a new CA directory: root, intermediate, bundle, config, state.")
    p.add_argument("--trust-domain", type=_trust_domain_arg, required=True)
    add_dir(p)
    p.add_argument("--force", action="store_true", help="replace an existing CA (destroys it)")
    add_passphrase(p)
    p.add_argument(
        "--leaf-ttl",
        type=_duration_arg,
        metavar="DURATION",
        help="lifetime of issued SVIDs, 30s .. 24h (default 1h); below 5m also lowers "
        "issuance.min_ttl_seconds to it: short SVIDs are for demos and tests",
    )
    p.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="state store: sqlite (in the CA directory, one CA process) or postgres (replicas)",
    )
    p.add_argument("--db-url", help="postgres: libpq URL without the password")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--db-password-env", metavar="NAME", help="postgres: env variable holding the password"
    )
    secret.add_argument(
        "--db-password-file",
        type=Path,
        metavar="FILE",
        help="postgres: file (mode 0600) whose first line is the password",
    )

    add_keys_flags(p)

    p = add("dashboard", "Serve the live mesh dashboard (a web page) on loopback.")
    add_dashboard_parser(p)

    p = add("issue", "Issue an X509-SVID offline (the key is made here).")
    add_dir(p)
    p.add_argument("--spiffe-id", type=_spiffe_id_arg, required=True)
    p.add_argument("--out", type=Path, required=True, help="directory for svid.pem/.key")
    p.add_argument("--ttl", type=_duration_arg, help="lifetime, e.g. 1h (default from ca.toml)")
    add_passphrase(p)

    p = add("token", "Manage one-time join tokens.")
    token_sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    t = token_sub.add_parser(
        "create",
        help="Create a join token bound to a SPIFFE ID; prints only the token.",
        description="Create a join token bound to a SPIFFE ID; prints only the token.",
    )
    add_dir(t)
    t.add_argument("--spiffe-id", type=_spiffe_id_arg, required=True)
    t.add_argument("--ttl", type=_duration_arg, help="token lifetime (default from ca.toml)")

    p = add("revoke", "Revoke a SPIFFE ID (all its certificates) or one certificate serial.")
    add_dir(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--spiffe-id", type=_spiffe_id_arg)
    which.add_argument(
        "--serial",
        type=_serial_arg,
        help="hexadecimal serial number of a certificate this CA issued (see --force)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="record a --serial revocation even though this CA's ledger has no such serial "
        "(e.g. a certificate issued before the ledger was moved)",
    )
    p.add_argument(
        "--reason",
        type=_reason_arg,
        default="",
        help="free text kept with the revocation (printable, at most 256 characters)",
    )

    p = add("status", "Show the CA, certificate expiry, outstanding tokens and revocations.")
    add_dir(p)
    p.add_argument("--json", action="store_true", help="the same as --output json")
    p.add_argument("--output", choices=["table", "json"], default="table")

    p = add("serve", "Run the CA HTTPS server.")
    p.epilog = EXIT_CODES_HELP
    add_dir(p)
    p.add_argument("--listen", help="HOST:PORT (default from ca.toml; port 0 picks one)")
    add_passphrase(p)
    add_serve_flags(p)

    add_db_parser(sub)
    add_root_parser(sub)
    add_control_parsers(sub)
    add_mesh_parsers(sub)
    return parser


# Helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _load_config(directory: Path) -> CaConfig:
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise OperationError(f"{directory}: not a CA directory (no {CONFIG_FILE}); run init")
    return load_config(file)


def _open_store(directory: Path) -> tuple[CaConfig, StateStore]:
    config = _load_config(directory)
    return config, open_store(config, directory)


def _load_ca(args: argparse.Namespace) -> LoadedCa:
    return load_ca_dir(args.dir, read_passphrase(args.passphrase_file))


def _check_member(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> None:
    if not spiffe_id.member_of(trust_domain):
        raise UsageError(
            "--spiffe-id", f"{spiffe_id} is not in this CA's trust domain {trust_domain}"
        )
    if not spiffe_id.path:
        raise UsageError("--spiffe-id", f"{spiffe_id} names the trust domain, not a workload")


def _check_issuable(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> None:
    """A workload ID of this trust domain, outside the mesh's own reserved IDs."""
    _check_member(spiffe_id, trust_domain)
    if spiffe_id.reserved:
        raise UsageError(
            "--spiffe-id",
            f"{spiffe_id} is reserved for the mesh itself ({RESERVED_PATH_PREFIX}...): a "
            "workload holding it could pass for the CA server",
        )


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _info(text: str) -> None:
    sys.stderr.write(text + "\n")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# Commands


def _store_config(args: argparse.Namespace) -> StoreConfig:
    """The ``[store]`` section from the init flags; postgres flags only with --store postgres."""
    if args.store == "sqlite":
        for flag, value in (
            ("--db-url", args.db_url),
            ("--db-password-env", args.db_password_env),
            ("--db-password-file", args.db_password_file),
        ):
            if value is not None:
                raise UsageError(flag, "only with --store postgres")
        return StoreConfig()
    if not args.db_url:
        raise UsageError("--db-url", "--store postgres needs the database URL")
    password_file = args.db_password_file
    if password_file is not None:
        if not password_file.is_file():
            raise UsageError("--db-password-file", f"{password_file} is not a file")
        # Absolute: the CA directory is built elsewhere and may be copied to a replica.
        password_file = password_file.absolute()
    return StoreConfig(
        kind="postgres",
        url=args.db_url,
        password_env=args.db_password_env,
        password_file=str(password_file) if password_file is not None else None,
    )


def _issuance_config(leaf_ttl: timedelta | None) -> IssuanceConfig:
    """The ``[issuance]`` section for ``init --leaf-ttl`` (the defaults without it)."""
    if leaf_ttl is None:
        return IssuanceConfig()
    if not FLOOR_LEAF_TTL <= leaf_ttl <= MAX_LEAF_TTL:
        raise UsageError(
            "--leaf-ttl",
            f"{format_duration(leaf_ttl)} is outside {format_duration(FLOOR_LEAF_TTL)}"
            f" .. {format_duration(MAX_LEAF_TTL)}",
        )
    seconds = int(leaf_ttl.total_seconds())
    return IssuanceConfig(
        default_ttl_seconds=seconds,
        min_ttl_seconds=min(seconds, int(MIN_LEAF_TTL.total_seconds())),
    )


def _cmd_init(args: argparse.Namespace) -> int:
    issuance = _issuance_config(args.leaf_ttl)
    passphrase = read_passphrase(args.passphrase_file)
    config = CaConfig(
        trust_domain=args.trust_domain.name,
        issuance=issuance,
        store=_store_config(args),
        keys=keys_config(args, UsageError),
    )
    ca = init_ca_dir(
        args.dir, args.trust_domain, _now(), passphrase=passphrase, force=args.force, config=config
    )
    _out(f"created CA for trust domain {ca.trust_domain} in {ca.path}")
    _out(f"  root          {_iso(ca.root.not_valid_after_utc)} (notAfter)")
    _out(f"  intermediate  {_iso(ca.signer.not_after)} (notAfter)")
    if config.keys.backend == "file":
        kind = "passphrase-encrypted" if passphrase else "unencrypted"
        _out(f"  keys          {kind}, mode 0600")
    else:
        _out(f"  keys          {config.keys.describe()}")
    if config.store.kind == "postgres":
        from mesh_ca.store.postgres import describe_url

        _out(f"  state         {describe_url(config.store.url or '')} (schema migrated)")
        _out("  replicas      copy this directory (cp -a) and run mesh-ca serve on each copy")
    else:
        _out(f"  state         SQLite {ca.path / config.store.path}")
    _out(f"  leaf TTL      {format_duration(timedelta(seconds=issuance.default_ttl_seconds))}")
    if issuance.min_ttl_seconds < MIN_LEAF_TTL.total_seconds():
        _out("  note          SVIDs shorter than 5m are for demos and tests only")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    ca = _load_ca(args)
    spiffe_id: SpiffeId = args.spiffe_id
    _check_issuable(spiffe_id, ca.trust_domain)
    issuance = ca.config.issuance
    ttl: timedelta = args.ttl or timedelta(seconds=issuance.default_ttl_seconds)
    low, high = issuance.ttl_bounds
    if not low <= ttl <= high:
        raise UsageError(
            "--ttl",
            f"{format_duration(ttl)} is outside {format_duration(low)} .. {format_duration(high)}"
            " (issuance.min_ttl_seconds .. max_ttl_seconds in ca.toml)",
        )
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError("--out", f"{out} exists and is not a directory")

    now = _now()
    key = generate_key()
    store = ca.open_store()
    try:
        # The active slot signs and the published slots are the bundle (a rotated CA's
        # intermediate.pem may be retired); the directory's files before the first rotation.
        signer, bundle = ca.signer, ca.bundle
        stored = trust_store(store).load_state()
        if stored is not None:
            state = TrustState.from_json(stored[1], "store: trust_state")
            passphrase = read_passphrase(args.passphrase_file)
            signer, bundle = signer_of(state, ca, passphrase), published_bundle(state, ca)
        leaf = issue_leaf(make_csr(key), spiffe_id, signer, now, ttl, min_ttl=low, max_ttl=high)
        # The ledger first: a recorded certificate nobody holds is harmless, the reverse is not.
        store.record_issued(
            IssuedRecord(leaf.serial_number, spiffe_id, "offline", now, leaf.not_valid_after_utc)
        )
    finally:
        store.close()
    pem = serialization.Encoding.PEM
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        # All three or none: a new key next to an old certificate is a broken identity.
        write_atomic_set(
            [
                (out / "svid.key", private_key_pem(key), 0o600),
                (
                    out / "svid.pem",
                    leaf.public_bytes(pem) + signer.cert.public_bytes(pem),
                    0o644,
                ),
                (out / BUNDLE_PEM, bundle.roots_pem(), 0o644),
            ]
        )
    except BaseException:
        if created:
            out.rmdir()
        raise
    _out(f"spiffe_id  {spiffe_id}")
    _out(f"serial     {leaf.serial_number:x}")
    _out(f"notAfter   {_iso(leaf.not_valid_after_utc)}")
    _out(f"files      {out / 'svid.pem'}, {out / 'svid.key'} (0600), {out / BUNDLE_PEM}")
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    config, store = _open_store(args.dir)
    try:
        spiffe_id: SpiffeId = args.spiffe_id
        _check_issuable(spiffe_id, config.trust_domain_value)
        ttl: timedelta = args.ttl or timedelta(seconds=config.issuance.token_ttl_seconds)
        if ttl > timedelta(days=7):
            raise UsageError("--ttl", f"{format_duration(ttl)} is longer than 7d")
        text, token_id, secret_hash = new_token()
        now = _now()
        store.add_token(token_id, secret_hash, spiffe_id, now, now + ttl)
    finally:
        store.close()
    _info(f"token {token_id} for {spiffe_id}, valid until {_iso(now + ttl)}, usable once")
    _out(text)
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    config, store = _open_store(args.dir)
    try:
        if args.spiffe_id is not None:
            _check_member(args.spiffe_id, config.trust_domain_value)
            if args.spiffe_id.reserved:
                raise UsageError("--spiffe-id", reserved_revocation(args.spiffe_id))
        if args.serial is not None and not args.force and store.issued_serial(args.serial) is None:
            raise OperationError(
                f"--serial {args.serial:x}: this CA never issued a certificate with that serial "
                "(a typo?); nothing was revoked. Check `mesh-ca status`, or pass --force to "
                "record the revocation anyway"
            )
        revocation = store.revoke(
            _now(), spiffe_id=args.spiffe_id, serial=args.serial, reason=args.reason
        )
    finally:
        store.close()
    what = (
        str(revocation.spiffe_id)
        if revocation.spiffe_id is not None
        else f"serial {revocation.serial:x}"
    )
    _out(f"revoked {what} at {_iso(revocation.revoked_at)}")
    return 0


def _cert_summary(file: Path) -> dict[str, Any]:
    cert = load_pem_certificates(file.read_bytes(), what=str(file))[0]
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
    }


def _cmd_status(args: argparse.Namespace) -> int:
    config, store = _open_store(args.dir)
    now = _now()
    try:
        tokens = store.outstanding_tokens(now)
        revocations = store.revocations()
        issued = store.issued_count()
        slots = slots_status(trust_store(store), config, now)
    finally:
        store.close()
    try:
        root = _cert_summary(args.dir / ROOT_CERT)
        intermediate = _cert_summary(args.dir / INTERMEDIATE_CERT)
    except OSError as exc:
        raise OperationError(f"{exc.filename}: cannot read ({exc.strerror})") from exc
    status: dict[str, Any] = {
        "trust_domain": config.trust_domain,
        "dir": str(args.dir.absolute()),
        "root": root,
        "intermediate": intermediate,
        "outstanding_tokens": [
            {
                "token_id": t.token_id,
                "spiffe_id": str(t.spiffe_id),
                "expires_at": _iso(t.expires_at),
            }
            for t in tokens
        ],
        "revocations": [
            {
                "spiffe_id": str(r.spiffe_id) if r.spiffe_id is not None else None,
                "serial": format(r.serial, "x") if r.serial is not None else None,
                "revoked_at": _iso(r.revoked_at),
                "reason": r.reason,
            }
            for r in revocations
        ],
        "issued_count": issued,
        "keys": config.keys.model_dump(exclude_none=True),
        "slots": slots,
        "federation": federation_status(args.dir, config.federation),
    }
    if args.json or args.output == "json":
        _out(json.dumps(status, indent=2))
        return 0
    _out(f"trust domain   {config.trust_domain}")
    _out(f"directory      {status['dir']}")
    _out(f"root.pem       notAfter {root['not_after']}  ({root['subject']})")
    _out(f"intermediate.pem notAfter {intermediate['not_after']}  ({intermediate['subject']})")
    print_slots(slots)
    _out(f"keys           {config.keys.describe()}")
    _out(f"issued         {issued} certificate(s)")
    _out(f"tokens         {len(tokens)} outstanding")
    for token in status["outstanding_tokens"]:
        _out(f"  {token['token_id']}  {token['spiffe_id']}  expires {token['expires_at']}")
    _out(f"revocations    {len(revocations)}")
    for rev in status["revocations"]:
        what = rev["spiffe_id"] or f"serial {rev['serial']}"
        _out(f"  {what}  at {rev['revoked_at']}  {rev['reason']}".rstrip())
    for line in federation_lines(status["federation"]):
        _out(line)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mesh_ca.server.main import serve_main  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("mesh_ca.server"):
            raise OperationError("serve: the CA server is not available in this build") from exc
        raise
    result: int = serve_main(args)
    return result


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": _cmd_init,
    "issue": _cmd_issue,
    "revoke": _cmd_revoke,
    "status": _cmd_status,
    "serve": _cmd_serve,
    "token": _cmd_token_create,  # "create" is its only action so far
    "db": db_main,
    "root": root_main,
    "endpoints": endpoints_main,
    "policy": policy_main,
    "dashboard": guarded(dashboard_main),
    "mesh": guarded(mesh_main),
    "check": guarded(check_main),
}


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    command = _COMMANDS[args.command]
    try:
        return command(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except StartupError as exc:  # the PKCS#11 key store: one line naming the keys.* key
        return _fail(str(exc), exc.code)
    except (
        OperationError,
        CaDirError,
        ConfigError,
        StoreError,
        IssuanceError,
        BundleError,
        SpiffeIdError,
        RotationError,
    ) as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
