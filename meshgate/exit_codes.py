"""Exit codes of `mesh-ca` and `mesh-sidecar`, and the one-line start-up error both print.

One table for both programs, so a supervisor (systemd, Kubernetes) can tell the causes
apart without reading the log:

== ==========================================================================
0  ok (also after a drain on SIGTERM/SIGINT)
1  the command failed; for ``mesh-sidecar``: the config file does not load or validate
2  usage: a wrong command line (the message names the flag)
3  a file or directory named by the config or a flag is missing, unreadable or invalid
   (trust bundle, certificate, key, CA directory)
4  the state cannot be used (``identity.state_dir`` of a sidecar, the CA's state store)
5  a listen address cannot be bound (in use, not a local address, no permission)
6  the policy directory does not load or validate
7  the CA's key store cannot be used (PKCS#11 module, token, PIN or key: ``keys.*``)
== ==========================================================================
"""

from __future__ import annotations

import enum
from typing import Final, final

from meshgate.errors import MeshgateError

__all__ = ["EXIT_CODES_HELP", "ExitCode", "StartupError"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    FILE = 3
    STATE = 4
    LISTEN = 5
    POLICY = 6
    KEYS = 7


EXIT_CODES_HELP: Final = (
    "exit codes: 0 ok (also after a drain), 1 failed (mesh-sidecar: invalid config file), "
    "2 usage, 3 a file or directory named by the config or a flag is missing, unreadable or "
    "invalid, 4 state_dir or the CA's state store unusable, 5 a listen address cannot be "
    "bound, 6 the policy directory does not load or validate, 7 the CA's PKCS#11 key store "
    "(module, token, PIN or key) cannot be used"
)


@final
class StartupError(MeshgateError):
    """A start-up failure the operator must fix: one line naming the config key (or flag)
    and its value, and the exit code for its cause."""

    def __init__(self, key: str, value: object, problem: str, code: ExitCode) -> None:
        problem = problem.removeprefix(f"{value}: ")  # the value is named once, up front
        super().__init__(f"{key} = {str(value)!r}: {problem}")
        self.key, self.value, self.problem, self.code = key, value, problem, code
