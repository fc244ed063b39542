"""A CA whose keys live in a real SoftHSM2 token: made with the real ``mesh-ca init --keys
pkcs11``, served by the real ``mesh-ca serve``; its SVIDs pass the SVID profile, py-spiffe
and ``openssl verify -x509_strict``; the keys are private, sensitive, non-extractable token
objects; a wrong PIN, a missing token, module or key stops start-up with one line naming the
``keys.*`` key and exit code 7."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.client import CaClient, IssuedSvid
from meshgate.exit_codes import ExitCode
from meshgate.identity import SpiffeId, TrustDomain, check_leaf_profile, verify_svid
from meshgate.keys import generate_key, private_key_pem
from tests.ca_server_process import CaServer, serving_ca_dir
from tests.softhsm import PIN_ENV, SoftToken

if TYPE_CHECKING:
    import pkcs11

# python-pkcs11 (the `pkcs11` extra) is imported inside the tests: the minimum-versions run
# of the unit tests (scripts/test.sh) collects this module without it.
pytestmark = pytest.mark.interop

TD = "hsm.example"
PREFIX = "served"  # key labels served-root, served-intermediate
MESH_CA = Path(sys.executable).parent / "mesh-ca"  # the installed console script


def mesh_ca(
    token: SoftToken, *args: str, pin: str | None = None, drop_pin: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **token.env(pin)}
    if drop_pin:
        del env[PIN_ENV]
    return subprocess.run(
        [str(MESH_CA), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def init_args(token: SoftToken, directory: Path, prefix: str) -> list[str]:
    return [
        "init", "--trust-domain", TD, "--dir", str(directory), "--keys", "pkcs11",
        "--pkcs11-module", token.module, "--token-label", token.label,
        "--pin-env", PIN_ENV, "--key-label-prefix", prefix,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def served(softhsm: SoftToken, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    base = tmp_path_factory.mktemp("hsm-ca")
    made = mesh_ca(softhsm, *init_args(softhsm, base / "ca", PREFIX))
    assert made.returncode == 0, made.stderr
    assert "PKCS#11 token" in made.stdout
    os.environ[PIN_ENV] = softhsm.pin  # this process loads the CA through the token too
    try:
        ca = load_ca_dir(base / "ca")
        with serving_ca_dir(
            ca, base / "server.log", argv=("-m", "mesh_ca.cli", "serve"), env=softhsm.env()
        ) as server:
            yield server
        assert server.process.returncode == 0, server.log()
    finally:
        os.environ.pop(PIN_ENV, None)


@pytest.fixture(scope="module")
def issued(served: CaServer) -> tuple[IssuedSvid, bytes]:
    """An SVID from /v1/bootstrap, renewed over mTLS once: (the renewed SVID, its key PEM)."""
    import trio

    sid = SpiffeId.workload(TD, "shop", "checkout")

    async def run() -> tuple[IssuedSvid, bytes]:
        key, new_key = generate_key(), generate_key()
        async with CaClient([served.address], TrustDomain(TD), served.bundles) as client:
            first = await client.bootstrap(served.token(sid), key)
            renewed = await client.renew(first.chain, key, new_key)
        return renewed, private_key_pem(new_key)

    return trio.run(run)


def write_svid(issued: tuple[IssuedSvid, bytes], directory: Path) -> tuple[Path, Path]:
    svid, key = issued
    chain = directory / "svid.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.chain))
    key_file = directory / "svid.key"
    key_file.write_bytes(key)
    return chain, key_file


def token_session(token: SoftToken) -> pkcs11.Session:
    """A session of our own on the token, through python-pkcs11 alone (not mesh_ca)."""
    import pkcs11
    from pkcs11 import exceptions as p11err

    lib = pkcs11.lib(token.module)
    try:
        return lib.get_token(token_label=token.label).open(user_pin=token.pin)
    except p11err.UserAlreadyLoggedIn:  # this process loaded the CA through the token
        return lib.get_token(token_label=token.label).open()


def test_svids_issued_by_mesh_ca_serve_pass_the_svid_profile(
    served: CaServer, issued: tuple[IssuedSvid, bytes]
) -> None:
    svid, _ = issued
    leaf, intermediate = svid.chain
    root = served.ca.root
    now = datetime.now(UTC)
    verified = verify_svid(leaf, [intermediate], served.bundles, now)
    assert verified.spiffe_id == SpiffeId.workload(TD, "shop", "checkout")
    assert check_leaf_profile(leaf) == verified.spiffe_id
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert intermediate == served.ca.signer.cert


def test_py_spiffe_loads_an_svid_signed_in_the_token(
    issued: tuple[IssuedSvid, bytes], tmp_path: Path
) -> None:
    from spiffe import X509Svid  # see tests/test_interop_issued_svids.py

    chain, key = write_svid(issued, tmp_path)
    svid = X509Svid.load(str(chain), str(key), serialization.Encoding.PEM)
    assert str(svid.spiffe_id) == f"spiffe://{TD}/ns/shop/svc/checkout"
    assert len(svid.cert_chain) == 2


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_strict_verify_accepts_the_chain(
    served: CaServer, issued: tuple[IssuedSvid, bytes], tmp_path: Path, purpose: str
) -> None:
    chain, _ = write_svid(issued, tmp_path)
    result = subprocess.run(
        [
            "openssl", "verify", "-x509_strict", "-purpose", purpose,
            "-CAfile", str(served.ca.path / "bundle.pem"),
            "-untrusted", str(served.ca.path / "intermediate.pem"),
            str(chain),
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_the_ca_servers_own_svid_is_signed_in_the_token(served: CaServer) -> None:
    context = ssl.create_default_context(cadata=(served.ca.path / "bundle.pem").read_text())
    context.check_hostname = False
    with (
        socket.create_connection((served.host, served.port), timeout=30) as tcp,
        context.wrap_socket(tcp) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    cert.verify_directly_issued_by(served.ca.signer.cert)
    assert str(check_leaf_profile(cert)) == f"spiffe://{TD}/mesh/ca"


def test_the_ca_keys_are_private_sensitive_non_extractable_token_objects(
    served: CaServer, softhsm: SoftToken
) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from pkcs11 import exceptions as p11err

    assert not list(served.ca.path.glob("*.key"))  # no key files at all
    session = token_session(softhsm)
    try:
        for role, cert in (("root", served.ca.root), ("intermediate", served.ca.signer.cert)):
            label = f"{PREFIX}-{role}"
            (private,) = session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
            )
            attributes = private.get_attributes(
                [
                    Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE,
                    Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
                    Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL, Attribute.DERIVE,
                ]
            )  # fmt: skip
            assert attributes == {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,  # only after a login with the PIN
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ALWAYS_SENSITIVE: True,
                Attribute.NEVER_EXTRACTABLE: True,
                Attribute.LOCAL: True,  # generated in the token, never imported
                Attribute.DERIVE: False,
            }, label
            with pytest.raises(p11err.AttributeSensitive):
                private[Attribute.VALUE]  # the token will not hand out the private value
            (public,) = session.get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
            )
            assert isinstance(public, pkcs11.PublicKey)
            der = pkcs11.util.ec.encode_ec_public_key(public)
            assert serialization.load_der_public_key(der) == cert.public_key(), label
    finally:
        session.close()


def _serve_once(token: SoftToken, ca: Path, **pin: object) -> subprocess.CompletedProcess[str]:
    return mesh_ca(token, "serve", "--dir", str(ca), "--listen", "127.0.0.1:0", **pin)  # type: ignore[arg-type]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert ExitCode.KEYS.value == 7
    assert result.returncode == ExitCode.KEYS, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def ca_copy(served: CaServer, tmp_path: Path) -> Path:
    """A copy of the served CA's directory (same token keys) to break one setting of."""
    copy = tmp_path / "ca"
    subprocess.run(["cp", "-a", str(served.ca.path), str(copy)], check=True)
    return copy


def _edit(ca: Path, key: str, value: str) -> None:
    toml = ca / "ca.toml"
    lines = [
        f'{key} = "{value}"' if line.startswith(f"{key} = ") else line
        for line in toml.read_text().splitlines()
    ]
    toml.write_text("\n".join(lines) + "\n")


def test_a_wrong_pin_stops_start_up_naming_keys_pin_env(softhsm: SoftToken, ca_copy: Path) -> None:
    line = _one_line(_serve_once(softhsm, ca_copy, pin="000000"))
    assert f"keys.pin_env = '{PIN_ENV}'" in line
    assert "refused the PIN" in line
    assert "000000" not in line
    assert softhsm.pin not in line


def test_an_unset_pin_stops_start_up_naming_keys_pin_env(softhsm: SoftToken, ca_copy: Path) -> None:
    line = _one_line(_serve_once(softhsm, ca_copy, drop_pin=True))
    assert f"keys.pin_env = '{PIN_ENV}'" in line
    assert "not set" in line


def test_a_missing_token_stops_start_up_naming_keys_token_label(
    softhsm: SoftToken, ca_copy: Path
) -> None:
    _edit(ca_copy, "token_label", "no-such-token")
    line = _one_line(_serve_once(softhsm, ca_copy))
    assert "keys.token_label = 'no-such-token': no token with this label" in line


def test_a_missing_module_stops_start_up_naming_keys_module(
    softhsm: SoftToken, ca_copy: Path
) -> None:
    _edit(ca_copy, "module", "/nonexistent/libpkcs11.so")
    line = _one_line(_serve_once(softhsm, ca_copy))
    assert "keys.module = '/nonexistent/libpkcs11.so': cannot load the PKCS#11 module" in line


def test_a_missing_key_stops_start_up_naming_keys_intermediate_key_label(
    softhsm: SoftToken, ca_copy: Path
) -> None:
    _edit(ca_copy, "intermediate_key_label", "no-such-key")
    line = _one_line(_serve_once(softhsm, ca_copy))
    assert "keys.intermediate_key_label = 'no-such-key'" in line


def test_init_refuses_labels_the_token_already_holds(
    served: CaServer, softhsm: SoftToken, tmp_path: Path
) -> None:
    from pkcs11 import Attribute, ObjectClass

    result = mesh_ca(softhsm, *init_args(softhsm, tmp_path / "again", PREFIX))
    line = _one_line(result)
    assert f"keys.root_key_label = '{PREFIX}-root': token '{softhsm.label}' already holds" in line
    assert not (tmp_path / "again").exists()
    session = token_session(softhsm)
    try:
        found = session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: f"{PREFIX}-root"}
        )
        assert len(list(found)) == 1  # the served CA's key, untouched
    finally:
        session.close()


def test_a_failed_init_destroys_the_keys_it_made(softhsm: SoftToken, tmp_path: Path) -> None:
    from pkcs11 import Attribute

    # The state store cannot be created (nothing listens on port 1): after both keys exist.
    args = [
        *init_args(softhsm, tmp_path / "failed", "failed"),
        "--store", "postgres", "--db-url", "postgresql://127.0.0.1:1/none",
    ]  # fmt: skip
    result = mesh_ca(softhsm, *args)
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "failed").exists()
    session = token_session(softhsm)
    try:
        for label in ("failed-root", "failed-intermediate"):
            assert not list(session.get_objects({Attribute.LABEL: label})), label
    finally:
        session.close()


def test_status_says_the_keys_are_in_the_token(served: CaServer, softhsm: SoftToken) -> None:
    import json

    text = mesh_ca(softhsm, "status", "--dir", str(served.ca.path), drop_pin=True)
    assert text.returncode == 0, text.stderr  # no PIN needed: status reads ca.toml only
    (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith("keys ")]
    assert f"PKCS#11 token '{softhsm.label}' via {softhsm.module}" in line
    assert f"'{PREFIX}-intermediate' (intermediate)" in line
    as_json = mesh_ca(softhsm, "status", "--dir", str(served.ca.path), "--json")
    keys = json.loads(as_json.stdout)["keys"]
    assert keys["backend"] == "pkcs11"
    assert keys["token_label"] == softhsm.label
    assert keys["pin_env"] == PIN_ENV
    assert softhsm.pin not in as_json.stdout + text.stdout


def test_concurrent_bootstraps_sign_through_the_token_from_worker_threads(
    softhsm: SoftToken, ca_copy: Path, tmp_path: Path
) -> None:
    import trio

    ca = load_ca_dir(ca_copy)
    extra = ("--threaded-handlers",)  # store and signing in worker threads, one token session
    with serving_ca_dir(ca, tmp_path / "threaded.log", extra=extra, env=softhsm.env()) as server:
        ids = [SpiffeId.workload(TD, "load", f"svc{i}") for i in range(24)]
        tokens = [server.token(sid) for sid in ids]
        issued: list[IssuedSvid] = []

        async def one(token: str) -> None:
            async with CaClient([server.address], TrustDomain(TD), server.bundles) as client:
                issued.append(await client.bootstrap(token, generate_key()))

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                for token in tokens:
                    nursery.start_soon(one, token)

        trio.run(run)
    assert server.process.returncode == 0, server.log()
    assert sorted(str(s.spiffe_id) for s in issued) == sorted(str(sid) for sid in ids)
    now = datetime.now(UTC)
    for svid in issued:
        assert verify_svid(svid.chain[0], [svid.chain[1]], server.bundles, now)


def test_mesh_ca_issue_signs_offline_through_the_token(
    served: CaServer, softhsm: SoftToken, tmp_path: Path
) -> None:
    sid = f"spiffe://{TD}/ns/batch/svc/report"
    out = tmp_path / "svid"
    result = mesh_ca(
        softhsm, "issue", "--dir", str(served.ca.path), "--spiffe-id", sid, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    leaf = x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())[0]
    leaf.verify_directly_issued_by(served.ca.signer.cert)
    assert str(check_leaf_profile(leaf)) == sid
    wrong = mesh_ca(
        softhsm, "issue", "--dir", str(served.ca.path), "--spiffe-id", sid,
        "--out", str(tmp_path / "no"), pin="000000",
    )  # fmt: skip
    expected = f"mesh-ca: error: {served.ca.path / 'ca.toml'}: keys.pin_env = '{PIN_ENV}'"
    assert _one_line(wrong).startswith(expected)
    assert not (tmp_path / "no").exists()
