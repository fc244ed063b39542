"""What the CA benchmarks send: join tokens in a CA's store, pre-made CSRs, request bodies
for `/v1/bootstrap` and `/v1/renew`, and mTLS client contexts with SVIDs of their own.

Shared by `scripts/bench.py` (sections ca, ca-instructions, replicas) and the load
generator's test. Bodies are built before a phase starts, so making them costs the
measured load nothing.
"""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization

from mesh_ca.ca_dir import LoadedCa
from mesh_ca.issuance import issue_leaf, make_csr
from mesh_ca.tokens import new_token
from meshgate.identity import BundleSet, SpiffeId
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import client_context

__all__ = ["add_tokens", "bootstrap_bodies", "csr_pems", "renew_bodies", "renew_contexts"]


def add_tokens(ca: LoadedCa, count: int, label: str = "svc") -> list[str]:
    """`count` join tokens added to the CA's store (one handle, one call each), for the IDs
    ``spiffe://TD/bench/<label><n>``."""
    tokens = []
    store = ca.open_store()
    now = datetime.now(UTC)
    try:
        for index in range(count):
            token, token_id, secret_hash = new_token()
            sid = SpiffeId.workload(ca.trust_domain, "bench", f"{label}{index}")
            store.add_token(token_id, secret_hash, sid, now, now + timedelta(hours=1))
            tokens.append(token)
    finally:
        store.close()
    return tokens


def csr_pems(count: int = 64) -> list[str]:
    """Pre-made CSRs (PEM) that the request bodies cycle through."""
    return [
        make_csr(generate_key()).public_bytes(serialization.Encoding.PEM).decode()
        for _ in range(count)
    ]


def bootstrap_bodies(tokens: list[str]) -> Iterator[bytes]:
    """One `/v1/bootstrap` body per join token (each usable once), each with a CSR over a
    key of its own: the CA binds a key to the first ID it is issued for and refuses it for
    any other (409 key_bound), so CSRs cannot be cycled across tokens for different IDs."""
    csrs = csr_pems(len(tokens))
    return iter(
        [
            json.dumps({"token": token, "csr": csr}).encode()
            for token, csr in zip(tokens, csrs, strict=True)
        ]
    )


def renew_bodies(csrs: list[str]) -> Iterator[bytes]:
    """`/v1/renew` bodies, endlessly. The CSRs are cycled over every renewing connection,
    which is fine because `renew_contexts` gives them all one SPIFFE ID (a key may renew
    the ID it is bound to); do not reuse these CSRs for bootstrap bodies."""
    return (json.dumps({"csr": csrs[i % len(csrs)]}).encode() for i in itertools.count())


def renew_contexts(ca: LoadedCa, count: int) -> list[ssl.SSLContext]:
    """`count` mTLS client contexts (one per connection), each with an SVID of its own, all
    for one SPIFFE ID (``bench/renew``): renewals cycle one set of CSRs, and the CA binds
    each key to one ID."""
    bundles = BundleSet.of(ca.bundle)
    contexts = []
    sid = SpiffeId.workload(ca.trust_domain, "bench", "renew")
    for _ in range(count):
        key = generate_key()
        leaf = issue_leaf(make_csr(key), sid, ca.signer, datetime.now(UTC))
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca.signer.cert))
        contexts.append(client_context(bundles, chain, private_key_pem(key)))
    return contexts


def raw_signing(ca: LoadedCa, seconds: float, csr_count: int = 64) -> tuple[int, float]:
    """`issue_leaf` from pre-made CSRs for `seconds`: (leaves, CPU seconds of this process);
    the baseline every CA benchmark's ratios are against."""
    csrs = [make_csr(generate_key()) for _ in range(csr_count)]
    sid = SpiffeId.workload(ca.trust_domain, "bench", "raw")
    now = datetime.now(UTC)
    count, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        for csr in csrs:
            issue_leaf(csr, sid, ca.signer, now)
        count += len(csrs)
    return count, time.process_time() - cpu_started
