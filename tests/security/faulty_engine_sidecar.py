"""`mesh-sidecar` with a fault injected into the policy engine, for the security suite.

Runs the real sidecar CLI in its own process after wrapping `cedarpy.is_authorized` so
that it raises for any request whose Cedar context mentions `/engine-fault`: the engine
failing, not a policy denying. Used by test_policy_engine_fault_denies_and_keeps_the_connection.
"""

from __future__ import annotations

import sys
from typing import Any

import cedarpy

from sidecar.cli import main

_real = cedarpy.is_authorized


def _faulty(request: Any, *args: Any, **kwargs: Any) -> Any:
    if "/engine-fault" in str(request.get("context", "")):
        raise RuntimeError("injected engine fault")
    return _real(request, *args, **kwargs)


cedarpy.is_authorized = _faulty

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
