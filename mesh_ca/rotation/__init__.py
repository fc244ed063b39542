"""CA key rotation: the trust state (root and intermediate slots), its pure state machines."""

from mesh_ca.rotation.slots import RotationPolicy, Step, StepKind, next_step, schedule
from mesh_ca.rotation.state import (
    IntermediateSlot,
    RootSlot,
    RotationError,
    SlotState,
    TrustState,
)

__all__ = [
    "IntermediateSlot",
    "RootSlot",
    "RotationError",
    "RotationPolicy",
    "SlotState",
    "Step",
    "StepKind",
    "TrustState",
    "next_step",
    "schedule",
]
