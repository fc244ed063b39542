"""The CA's trust state: root and intermediate slots and the published sequence. Pure.

One `TrustState` is the whole truth of what a CA signs with and publishes; it lives in the
state store as one JSON document with a version (`mesh_ca.store.trust`), so every replica
reads the same slots and exactly one replica's compare-and-set wins each change.

Slots, as SPIRE keeps them: an intermediate is ``prepared`` (published, so every sidecar
learns it, but not signing), ``active`` (signing) or ``old`` (no longer signing, still
published until the last leaf it signed has expired). Roots have the same three states
during an operator-driven root rotation. `sequence` is the ``spiffe_sequence`` of the
published trust material: every change of the state raises it by one.

Invariants (checked on every parse and every change, fail closed): exactly one active root
and one active intermediate, at most one prepared of each, every intermediate signed by a
root of the state, the active intermediate signed by the active root.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from meshgate.errors import MeshgateError

__all__ = ["IntermediateSlot", "RootSlot", "RotationError", "SlotState", "TrustState"]


class RotationError(MeshgateError, ValueError):
    """A rotation step or a stored trust state is refused; the message says why."""


class SlotState(enum.StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


@final
@dataclass(frozen=True)
class RootSlot:
    cert: x509.Certificate
    state: SlotState
    since: datetime  # when it entered `state`

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


@final
@dataclass(frozen=True)
class IntermediateSlot:
    cert: x509.Certificate
    state: SlotState
    since: datetime  # when it entered `state`
    # The private key as PEM (encrypted with the CA passphrase when there is one), or None:
    # the CA directory's own intermediate key (intermediate.key, or the PKCS#11 token).
    key_pem: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


@final
@dataclass(frozen=True)
class TrustState:
    sequence: int
    roots: tuple[RootSlot, ...]
    intermediates: tuple[IntermediateSlot, ...]

    def __post_init__(self) -> None:
        _check(self)

    # Reading

    def root(self, state: SlotState) -> RootSlot | None:
        return next((r for r in self.roots if r.state is state), None)

    def intermediate(self, state: SlotState) -> IntermediateSlot | None:
        return next((i for i in self.intermediates if i.state is state), None)

    @property
    def active_root(self) -> RootSlot:
        found = self.root(SlotState.ACTIVE)
        assert found is not None  # _check
        return found

    @property
    def active(self) -> IntermediateSlot:
        found = self.intermediate(SlotState.ACTIVE)
        assert found is not None  # _check
        return found

    @property
    def root_rotation_in_progress(self) -> bool:
        return any(r.state is not SlotState.ACTIVE for r in self.roots)

    def issuer_of(self, slot: IntermediateSlot) -> RootSlot:
        found = next((r for r in self.roots if signed_by(slot.cert, r.cert)), None)
        assert found is not None  # _check
        return found

    def olds(self) -> tuple[IntermediateSlot, ...]:
        return tuple(i for i in self.intermediates if i.state is SlotState.OLD)

    # Changing: every change raises the sequence by one

    def changed(
        self,
        *,
        roots: Iterable[RootSlot] | None = None,
        intermediates: Iterable[IntermediateSlot] | None = None,
    ) -> TrustState:
        return TrustState(
            self.sequence + 1,
            self.roots if roots is None else tuple(roots),
            self.intermediates if intermediates is None else tuple(intermediates),
        )

    # JSON

    def to_json(self) -> str:
        return json.dumps(
            {
                "sequence": self.sequence,
                "roots": [
                    {"cert": _pem(r.cert), "state": r.state.value, "since": r.since.isoformat()}
                    for r in self.roots
                ],
                "intermediates": [
                    {
                        "cert": _pem(i.cert),
                        "state": i.state.value,
                        "since": i.since.isoformat(),
                        "key": i.key_pem.decode("ascii") if i.key_pem is not None else None,
                    }
                    for i in self.intermediates
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "trust state") -> TrustState:
        try:
            data = json.loads(text)
            roots = tuple(
                RootSlot(_cert(r["cert"]), SlotState(r["state"]), _time(r["since"]))
                for r in data["roots"]
            )
            intermediates = tuple(
                IntermediateSlot(
                    _cert(i["cert"]),
                    SlotState(i["state"]),
                    _time(i["since"]),
                    i["key"].encode("ascii") if i.get("key") is not None else None,
                )
                for i in data["intermediates"]
            )
            sequence = data["sequence"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RotationError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise RotationError(f"{where}: sequence must be a non-negative integer")
        try:
            return cls(sequence, roots, intermediates)
        except RotationError as exc:
            raise RotationError(f"{where}: {exc}") from exc


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _cert(text: Any) -> x509.Certificate:
    return x509.load_pem_x509_certificate(str(text).encode("ascii"))


def _time(text: Any) -> datetime:
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        raise ValueError(f"naive time {text!r}")
    return when


def _check(state: TrustState) -> None:
    for kind, slots in (("root", state.roots), ("intermediate", state.intermediates)):
        states = [s.state for s in slots]
        if states.count(SlotState.ACTIVE) != 1:
            raise RotationError(f"{states.count(SlotState.ACTIVE)} active {kind}s, need one")
        if states.count(SlotState.PREPARED) > 1:
            raise RotationError(f"{states.count(SlotState.PREPARED)} prepared {kind}s, at most one")
        prints = [fingerprint(s.cert) for s in slots]
        if len(set(prints)) != len(prints):
            raise RotationError(f"the same {kind} certificate is in two slots")
    for slot in state.intermediates:
        if not any(signed_by(slot.cert, r.cert) for r in state.roots):
            raise RotationError(
                f"intermediate {slot.fingerprint[:16]} ({slot.state}) is signed by no root"
            )
    active = state.intermediate(SlotState.ACTIVE)
    root = state.root(SlotState.ACTIVE)
    assert active is not None
    assert root is not None
    if not signed_by(active.cert, root.cert):
        raise RotationError("the active intermediate is not signed by the active root")
    prepared_root = state.root(SlotState.PREPARED)
    prepared = state.intermediate(SlotState.PREPARED)
    if prepared_root is not None and (
        prepared is None or not signed_by(prepared.cert, prepared_root.cert)
    ):
        raise RotationError("a prepared root needs a prepared intermediate signed by it")
