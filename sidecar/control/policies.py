"""Central policies: the slice of the control plane's policy set that concerns [inbound].

Follows ``/v1/control/policies`` by long-poll (``after`` = the version enforced now, which
the CA records for ``mesh-ca policy status``). Each new set is checked (its ``sha256`` over
the files, safe file names) and written to ``state_dir/policies/v<version>/``, validated
and swapped in by `LivePolicies.load` (the same loader and swap as a policy directory: a
set that does not validate is refused and the last good set stays), then recorded as
current in ``state_dir/policies/current.json`` and older copies removed. At start the
persisted current set is loaded before anything else, so a restart during a control-plane
outage enforces it; without one every request is denied until the first set arrives.
While the CA is unreachable the last good set stays; the time since the last answer is
the staleness shown in metrics, ``/readyz`` details and ``/policies``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, final

import trio

from mesh_ca.client import CaClientError
from mesh_ca.control.wire import POLICIES_PATH, PoliciesWatch, PolicySet, files_sha256
from meshgate.clock import Clock
from meshgate.errors import PolicyError
from meshgate.files import write_atomic
from sidecar.config import ControlPlaneConfig
from sidecar.control.backoff import Backoff
from sidecar.control.client import ControlClient
from sidecar.observe.logs import event
from sidecar.policy import ReloadOutcome
from sidecar.policy.live import LivePolicies

__all__ = ["CentralPolicies", "PolicySetError", "check_policy_set"]

log = logging.getLogger("sidecar.control.policies")
_FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_FILES: Final = 1000
CURRENT_FILE: Final = "current.json"


class PolicySetError(PolicyError, ValueError):
    """A published set this sidecar will not write or load; the last good set stays."""


def check_policy_set(answer: PolicySet) -> None:
    """Refuse a set whose hash does not match its files, or whose file names could leave
    the directory. Pure."""
    if len(answer.files) > _MAX_FILES:
        raise PolicySetError(f"version {answer.version}: more than {_MAX_FILES} files")
    for name in answer.files:
        if not _FILE_NAME.fullmatch(name) or name == CURRENT_FILE:
            raise PolicySetError(f"version {answer.version}: file name {name!r} refused")
    if files_sha256(answer.files) != answer.sha256:
        raise PolicySetError(f"version {answer.version}: sha256 does not match its files")


@final
@dataclass
class CentralPolicies:
    """The control-plane source of one sidecar's `LivePolicies`."""

    live: LivePolicies
    service: str
    state_dir: Path
    config: ControlPlaneConfig
    clock: Clock
    client: ControlClient
    version: int = 0  # the control plane's version enforced now (0: none)
    sha256: str | None = None
    published_at: datetime | None = None
    loaded_from: str | None = None  # "control-plane" or "persisted"
    last_contact: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    refused: int = 0
    # Set once a set is enforced (persisted or received): registration waits for it, so
    # peers are not sent to an instance that would deny them all.
    enforcing: trio.Event = field(default_factory=trio.Event)

    @property
    def root(self) -> Path:
        return self.state_dir / "policies"

    # -- staleness -------------------------------------------------------------------------

    def stale_seconds(self) -> float | None:
        """Seconds since the CA last answered a watch (None: never in this process)."""
        if self.last_contact is None:
            return None
        return max(0.0, (self.clock.now() - self.last_contact).total_seconds())

    def stale(self) -> bool:
        age = self.stale_seconds()
        return age is None or age > self.config.stale_after_seconds

    def view(self) -> dict[str, Any]:
        age = self.stale_seconds()
        return {
            "source": "control-plane",
            "service": self.service,
            "version": self.version or None,
            "sha256": self.sha256,
            "published_at": self.published_at.isoformat() if self.published_at else None,
            "loaded_from": self.loaded_from,
            "last_contact": self.last_contact.isoformat() if self.last_contact else None,
            "stale_seconds": None if age is None else round(age, 3),
            "stale": self.stale(),
            "stale_after_seconds": self.config.stale_after_seconds,
            "refused": self.refused,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }

    # -- persistence -----------------------------------------------------------------------

    async def load_persisted(self) -> bool:
        """Enforce the set persisted by an earlier run, if there is a good one."""
        try:
            meta = json.loads((self.root / CURRENT_FILE).read_text(encoding="utf-8"))
            version, sha256 = int(meta["version"]), str(meta["sha256"])
            directory = self.root / f"v{version}"
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._error(f"persisted policy set unusable: {exc}")
            return False
        outcome = await self.live.load(directory)
        if outcome is ReloadOutcome.FAILED:
            problem = self.live.store.last_error
            self._error(f"persisted policy set v{version}: {problem.message if problem else '?'}")
            return False
        self.version, self.sha256, self.loaded_from = version, sha256, "persisted"
        self.enforcing.set()
        published = meta.get("published_at")
        self.published_at = datetime.fromisoformat(published) if published else None
        event(log, "enforcing the persisted policy set", version=version, service=self.service)
        return True

    def _write(self, answer: PolicySet) -> Path:
        directory = self.root / f"v{answer.version}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, mode=0o700)
        for name, text in answer.files.items():
            write_atomic(directory / name, text.encode("utf-8"), 0o600)
        return directory

    def _commit(self, answer: PolicySet, keep: Path) -> None:
        meta = {
            "version": answer.version,
            "sha256": answer.sha256,
            "service": answer.service,
            "published_at": answer.published_at.isoformat(),
        }
        write_atomic(self.root / CURRENT_FILE, json.dumps(meta).encode(), 0o600)
        for old in self.root.glob("v*"):
            if old != keep and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    # -- the watch ---------------------------------------------------------------------------

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, self.clock.now()

    async def apply(self, answer: PolicySet) -> bool:
        """Check, write, validate and swap in one published set; False when refused."""
        try:
            check_policy_set(answer)
            directory = await trio.to_thread.run_sync(self._write, answer)
        except (PolicySetError, OSError) as exc:
            return self._refuse(answer, str(exc))
        outcome = await self.live.load(directory)
        if outcome is ReloadOutcome.FAILED:
            problem = self.live.store.last_error
            await trio.to_thread.run_sync(
                functools.partial(shutil.rmtree, directory, ignore_errors=True)
            )
            return self._refuse(answer, problem.message if problem else "did not load")
        try:
            await trio.to_thread.run_sync(self._commit, answer, directory)
        except OSError as exc:  # enforced now, but a restart would not find it
            self._error(f"policy set v{answer.version} not persisted: {exc}")
        else:
            self.last_error = None
        self.version, self.sha256 = answer.version, answer.sha256
        self.published_at, self.loaded_from = answer.published_at, "control-plane"
        self.enforcing.set()
        event(log, "policy set from the control plane", version=answer.version, outcome=outcome)
        return True

    def _refuse(self, answer: PolicySet, why: str) -> bool:
        self.refused += 1
        self._error(f"policy set v{answer.version} refused: {why}")
        event(
            log,
            "policy set refused: the last good set stays",
            level=logging.ERROR,
            version=answer.version,
            enforced=self.version or None,
            error=why,
        )
        return False

    async def run(self) -> None:
        """Follow the published set forever."""
        wait = self.config.watch_wait_seconds
        backoff = Backoff(self.config.retry_max_seconds)
        while True:
            watch = PoliciesWatch(
                service=self.service, after=self.version, wait_ms=int(wait * 1000)
            )
            try:
                answer = await self.client.post(POLICIES_PATH, watch, PolicySet, wait_seconds=wait)
            except CaClientError as exc:
                if self.last_error != str(exc):
                    event(
                        log,
                        "policy watch failed: enforcing the last good set",
                        level=logging.WARNING,
                        code=exc.code,
                        error=exc.message,
                        version=self.version or None,
                    )
                self._error(str(exc))
                await trio.sleep(backoff.next())
                continue
            self.last_contact = self.clock.now()
            if answer.version == self.version:
                backoff.reset()
                if self.last_error is not None and self.sha256 == answer.sha256:
                    self.last_error = None
                continue
            if await self.apply(answer):
                backoff.reset()
            else:  # the CA answers a refused version at once: do not spin on it
                await trio.sleep(backoff.next())
