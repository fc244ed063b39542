"""Keeps a replica's `RegistryView` current and wakes the watchers of a changed service.

A change made here is read back at once (`refresh`); a lease's end is found by the sweeper
(every replica runs it, the store makes a double sweep harmless), which sleeps until the
next known expiry (at most a second); another replica's change arrives as a PostgreSQL
notification on a listener thread; a full re-read every `_RESYNC_SECONDS` heals a missed
one. Waiting watchers are one `trio.Event` per watched service, gone with its last waiter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final, final

import trio

from mesh_ca.control.registry import RegistryView
from mesh_ca.control.threads import Threads
from mesh_ca.store import StoreError
from mesh_ca.store.control import ControlStore
from meshgate.clock import Clock

__all__ = ["RegistrySync"]

log = logging.getLogger("mesh_ca.control")
_RESYNC_SECONDS: Final = 30.0
_SWEEP_MAX_SECONDS: Final = 1.0
_SWEEP_MIN_SECONDS: Final = 0.05
_RETRY_SECONDS: Final = 1.0
_MAX_RETRY_SECONDS: Final = 10.0


class _Waiters:
    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.count = 0


@final
class RegistrySync:
    def __init__(
        self,
        store: ControlStore,
        clock: Clock,
        threads: Threads,
        view: RegistryView,
        on_policy_published: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.view = view
        self._threads = threads
        self._on_policy_published = on_policy_published
        self._waiters: dict[str, _Waiters] = {}
        self._closing = False
        self._heard: set[str] = set()
        self._heard_policy = False
        self._heard_event = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    # Watchers

    async def wait(self, service: str, deadline: float) -> None:
        """Until `service` changes, `close`, or trio time `deadline`."""
        if self._closing:
            return
        waiters = self._waiters.get(service)
        if waiters is None:
            waiters = self._waiters[service] = _Waiters()
        waiters.count += 1
        try:
            with trio.move_on_at(deadline):
                await waiters.event.wait()
        finally:
            waiters.count -= 1
            # The entry lives only while someone waits: watching names that never change
            # leaves nothing behind.
            if waiters.count == 0 and self._waiters.get(service) is waiters:
                del self._waiters[service]

    def _wake(self, service: str) -> None:
        waiters = self._waiters.pop(service, None)
        if waiters is not None:
            waiters.event.set()

    def close(self) -> None:
        """Shutting down: answer every waiting watcher now, stop listening."""
        self._closing = True
        for waiters in self._waiters.values():
            waiters.event.set()

    # Reading the store

    async def resync(self) -> None:
        try:
            services = await self._threads.run(self.store.all_endpoints, self.clock.now())
        except StoreError as exc:
            log.error(json.dumps({"event": "registry_read_failed", "error": str(exc)}))
            return
        for current in services:
            if self.view.update(current):
                self._wake(current.service)

    async def refresh(self, service: str) -> None:
        current = await self._threads.run(self.store.endpoints, service, self.clock.now())
        if self.view.update(current):
            self._wake(service)

    # Loops

    async def run(self) -> None:
        """Sweep, listen and apply what was heard, until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            nursery.start_soon(self._heard_loop)
            nursery.start_soon(self._listen_loop)

    async def _sweep_loop(self) -> None:
        resync_at = trio.current_time() + _RESYNC_SECONDS
        while True:
            now = self.clock.now()
            try:
                changed = await self._threads.run(self.store.expire, now)
                for service in changed:
                    await self.refresh(service)
            except StoreError as exc:
                log.error(json.dumps({"event": "lease_sweep_failed", "error": str(exc)}))
            if trio.current_time() >= resync_at:
                resync_at = trio.current_time() + _RESYNC_SECONDS
                await self.resync()
            wait = _SWEEP_MAX_SECONDS
            next_expiry = self.view.next_expiry()
            if next_expiry is not None:
                wait = min(wait, (next_expiry - self.clock.now()).total_seconds())
            await trio.sleep(max(_SWEEP_MIN_SECONDS, wait))

    async def _listen_loop(self) -> None:
        retry = _RETRY_SECONDS
        while True:
            started = trio.current_time()
            try:
                await trio.to_thread.run_sync(
                    self.store.listen,
                    self._heard_in_thread,
                    self._listen_stopped,
                    abandon_on_cancel=True,
                )
            except StoreError as exc:
                log.error(
                    json.dumps(
                        {"event": "change_listener_lost", "error": str(exc), "retry_s": retry}
                    )
                )
            else:
                if trio.current_time() - started < _RETRY_SECONDS and not self._closing:
                    return  # a backend without notifications (SQLite): one process only
            if self._closing:
                return
            # A database that is down refuses every attempt: back off, up to 10 s.
            lasted = trio.current_time() - started
            retry = (
                _RETRY_SECONDS
                if lasted > _MAX_RETRY_SECONDS
                else min(2 * retry, _MAX_RETRY_SECONDS)
            )
            await trio.sleep(retry)
            await self.resync()  # what was missed while not listening
            await self._on_policy_published()

    def _listen_stopped(self) -> bool:
        return self._closing

    def _heard_in_thread(self, payload: str) -> None:
        if self._token is not None:
            trio.from_thread.run_sync(self._note, payload, trio_token=self._token)

    def _note(self, payload: str) -> None:
        kind, _, what = payload.partition(":")
        if kind == "endpoints":
            self._heard.add(what)
        elif kind == "policies":
            self._heard_policy = True
        self._heard_event.set()

    async def _heard_loop(self) -> None:
        while True:
            await self._heard_event.wait()
            self._heard_event = trio.Event()
            services, self._heard = self._heard, set()
            policy, self._heard_policy = self._heard_policy, False
            try:
                for service in sorted(services):
                    await self.refresh(service)
            except StoreError as exc:
                log.error(json.dumps({"event": "registry_read_failed", "error": str(exc)}))
            if policy:
                await self._on_policy_published()
