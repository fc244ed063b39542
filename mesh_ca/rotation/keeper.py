"""Blocking glue between the trust state, the CA directory's keys and the store.

No trio: the CA server runs these in a worker thread, the CLI calls them directly.
- `load_state`: the stored trust state, seeded from the CA directory on first use.
- `signer_of`, `published_bundle`: what the active slot signs with and what is published.
- `run_due_step`: the automatic step due now, if any, written with compare-and-set.
- `root_key`, `new_root_files`: where root keys live (``root.key`` for the root made by
  ``mesh-ca init``, ``roots/<sha256 prefix>.key`` for roots made by ``root prepare``).

Keys of intermediates made here are kept in the trust state (PEM, encrypted with the CA
passphrase when one is given), so every replica can sign with the activated one. Roots'
keys stay in files: only the replica or host that makes a new intermediate needs them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.ca_dir import ROOT_CERT, ROOT_KEY, LoadedCa
from mesh_ca.issuance import Signer, make_intermediate, make_root
from mesh_ca.rotation.slots import RotationPolicy, Step, StepKind, activated, next_step, prepared
from mesh_ca.rotation.slots import retired as retired_state
from mesh_ca.rotation.state import (
    IntermediateSlot,
    RootSlot,
    RotationError,
    SlotState,
    TrustState,
    fingerprint,
)
from mesh_ca.store.trust import AuditEntry, TrustStore
from meshgate.identity import TrustBundle, bundle_sequence
from meshgate.keys import (
    KeyFileError,
    PrivateKey,
    generate_key,
    load_private_key,
    private_key_pem,
    write_private_file,
)

__all__ = [
    "ROOTS_DIR",
    "Loaded",
    "load_state",
    "new_intermediate",
    "new_root_files",
    "published_bundle",
    "root_key",
    "run_due_step",
    "save",
    "signer_of",
]

log = logging.getLogger("mesh_ca.rotation")
ROOTS_DIR: Final = "roots"


@final
@dataclass(frozen=True)
class Loaded:
    version: int
    state: TrustState


def _seed(ca: LoadedCa, now: datetime) -> TrustState:
    """The trust state of a CA directory that never rotated: its root and intermediate.

    Other roots in its bundle.pem (a hand-made overlap) stay published, as old roots: they
    mark a root rotation in progress (automatic steps pause) until `mesh-ca root retire`.
    """
    roots = tuple(
        RootSlot(cert, SlotState.ACTIVE if cert == ca.root else SlotState.OLD, now)
        for cert in ca.bundle.roots
    )
    active = IntermediateSlot(ca.signer.cert, SlotState.ACTIVE, now, None)
    return TrustState(bundle_sequence(ca.bundle.roots), roots, (active,))


def load_state(trust: TrustStore, ca: LoadedCa, now: datetime) -> Loaded:
    """The stored trust state; the first caller stores the seed from the CA directory."""
    for _ in range(3):
        stored = trust.load_state()
        if stored is not None:
            version, document = stored
            return Loaded(version, TrustState.from_json(document, "store: trust_state"))
        seed = _seed(ca, now)
        entry = AuditEntry(now, "mesh-ca", "seed", f"trust state from {ca.path}")
        if trust.save_state(0, seed.to_json(), entry):
            return Loaded(1, seed)
    raise RotationError("store: trust_state keeps changing; try again")


def save(
    trust: TrustStore, loaded: Loaded, new: TrustState, now: datetime, actor: str, action: str
) -> bool:
    detail = json.dumps(
        {
            "sequence": new.sequence,
            "roots": {r.fingerprint[:16]: r.state.value for r in new.roots},
            "intermediates": {i.fingerprint[:16]: i.state.value for i in new.intermediates},
        },
        sort_keys=True,
    )
    return trust.save_state(loaded.version, new.to_json(), AuditEntry(now, actor, action, detail))


def signer_of(state: TrustState, ca: LoadedCa, passphrase: bytes | None) -> Signer:
    """The active intermediate with its key. Fails closed (`RotationError`)."""
    active = state.active
    if active.key_pem is None:
        if active.cert != ca.signer.cert:
            raise RotationError(
                f"the active intermediate {active.fingerprint[:16]} has no stored key and is "
                f"not {ca.path}/intermediate.pem"
            )
        return ca.signer
    try:
        key = serialization.load_pem_private_key(active.key_pem, password=passphrase)
    except (TypeError, ValueError) as exc:
        hint = "give the CA passphrase" if passphrase is None else "wrong passphrase?"
        raise RotationError(
            f"the active intermediate {active.fingerprint[:16]}'s key cannot be read ({hint})"
        ) from exc
    from cryptography.hazmat.primitives.asymmetric import ec

    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or key.public_key() != active.cert.public_key()
    ):
        raise RotationError(
            f"the stored key of intermediate {active.fingerprint[:16]} does not match it"
        )
    return Signer(active.cert, key)


def published_bundle(state: TrustState, ca: LoadedCa) -> TrustBundle:
    """Roots and intermediates of every slot (prepared, active, old), at the state's sequence."""
    return TrustBundle(
        ca.trust_domain,
        tuple(r.cert for r in state.roots),
        tuple(i.cert for i in state.intermediates),
        state.sequence,
    )


def root_key(ca_dir: Path, root: x509.Certificate, passphrase: bytes | None) -> PrivateKey:
    """The key of `root`: ``root.key`` for the CA's first root, else ``roots/<fp>.key``."""
    first = ca_dir / ROOT_CERT
    try:
        if first.is_file() and x509.load_pem_x509_certificate(first.read_bytes()) == root:
            file = ca_dir / ROOT_KEY
        else:
            file = ca_dir / ROOTS_DIR / f"{fingerprint(root)[:16]}.key"
        key = load_private_key(file, passphrase)
    except (OSError, ValueError, KeyFileError) as exc:
        raise RotationError(
            f"the key of root {fingerprint(root)[:16]} is not available here ({exc}); "
            "a new intermediate needs it"
        ) from exc
    if key.public_key() != root.public_key():
        raise RotationError(f"{file}: is not the key of root {fingerprint(root)[:16]}")
    return key


def new_root_files(
    ca: LoadedCa, passphrase: bytes | None, now: datetime
) -> tuple[RootSlot, PrivateKey]:
    """A new root (10 years), its key written 0600 to ``roots/`` beside its certificate."""
    key = generate_key()
    cert = make_root(ca.trust_domain, key, now)
    folder = ca.path / ROOTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    name = fingerprint(cert)[:16]
    write_private_file(folder / f"{name}.key", private_key_pem(key, passphrase))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return RootSlot(cert, SlotState.PREPARED, now), key


def new_intermediate(
    ca: LoadedCa,
    root: x509.Certificate,
    key_of_root: PrivateKey,
    passphrase: bytes | None,
    now: datetime,
    policy: RotationPolicy,
) -> IntermediateSlot:
    key = generate_key()
    cert = make_intermediate(ca.trust_domain, key, root, key_of_root, now, policy.intermediate_ttl)
    return IntermediateSlot(cert, SlotState.PREPARED, now, private_key_pem(key, passphrase))


def run_due_step(
    trust: TrustStore,
    ca: LoadedCa,
    loaded: Loaded,
    now: datetime,
    policy: RotationPolicy,
    passphrase: bytes | None,
    actor: str,
) -> Step | None:
    """Perform the automatic step due at `now`, if any; the step if this caller did it,
    None if nothing was due or another replica changed the state first."""
    step = next_step(loaded.state, now, policy, trust.leaves_until)
    if step is None:
        return None
    if step.kind is StepKind.PREPARE:
        if ca.config.keys.backend != "file":
            raise RotationError(
                'automatic rotation needs keys.backend = "file" (a PKCS#11 token\'s '
                "intermediate is not rotated yet); set rotation.enabled = false"
            )
        root = loaded.state.active_root.cert
        slot = new_intermediate(
            ca, root, root_key(ca.path, root, passphrase), passphrase, now, policy
        )
        new = prepared(loaded.state, slot)
    elif step.kind is StepKind.ACTIVATE:
        new = activated(loaded.state, now)
    else:
        assert step.slot is not None
        new = retired_state(loaded.state, step.slot.fingerprint)
    action = f"intermediate {step.kind.value}"
    if not save(trust, loaded, new, now, f"{actor} (automatic)", action):
        return None
    log.info(
        json.dumps(
            {
                "event": "intermediate_rotation",
                "step": step.kind.value,
                "reason": step.reason,
                "sequence": new.sequence,
            }
        )
    )
    return step
