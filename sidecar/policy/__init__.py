"""Cedar policies as files: load, validate, slice and decide. Pure: no trio, no sockets.

`load_snapshot` turns a directory into an immutable `PolicySnapshot` (or a located
`PolicyLoadError`), `decide` answers one `AccessRequest`, and `PolicyStore` keeps the last
good snapshot across reloads. `watch.py` is the thin trio shell that triggers reloads.
"""

from sidecar.policy.decision import (
    AccessRequest,
    Decision,
    DecisionReason,
    decide,
    deny_unloaded,
)
from sidecar.policy.loader import PolicyLoadError, load_snapshot, workload_entity
from sidecar.policy.snapshot import PolicyInfo, PolicySnapshot
from sidecar.policy.source import PolicyProblem, directory_fingerprint
from sidecar.policy.store import PolicyStore, ReloadError, ReloadOutcome

__all__ = [
    "AccessRequest",
    "Decision",
    "DecisionReason",
    "PolicyInfo",
    "PolicyLoadError",
    "PolicyProblem",
    "PolicySnapshot",
    "PolicyStore",
    "ReloadError",
    "ReloadOutcome",
    "decide",
    "deny_unloaded",
    "directory_fingerprint",
    "load_snapshot",
    "workload_entity",
]
