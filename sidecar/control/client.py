"""The control-plane calls of a sidecar, over mTLS to the CA as its current SVID.

A thin wrapper over `mesh_ca.client.CaClient.call`: JSON bodies are the wire models of
`mesh_ca.control.wire`, the answer is validated before anyone uses it (an unusable answer
is `CaUnavailable`, retried like an unreachable CA), and the CA is recognised by the trust
bundles of the current credentials (a new `CaClient` when they change, so its kept-alive
connections never outlive the SVID they were made with). Fails closed:
without an SVID nothing is sent (`CaUnavailable` with code ``no_svid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, final

import trio
from pydantic import BaseModel, ValidationError

from mesh_ca.client import CaClient, CaUnavailable
from meshgate.clock import Clock
from sidecar.identity.credentials import Credentials, CredentialStore

__all__ = ["ControlClient"]

Answer = TypeVar("Answer", bound=BaseModel)
# How long one call may take beyond the time the CA may hold it (long-poll).
_TIMEOUT_SECONDS = 10.0


@final
class ControlClient:
    def __init__(
        self,
        addresses: Sequence[str],
        store: CredentialStore,
        clock: Clock,
        *,
        timeout_seconds: float = _TIMEOUT_SECONDS,
    ) -> None:
        self.addresses = tuple(addresses)
        self.store = store
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self._client: CaClient | None = None
        self._credentials: Credentials | None = None

    async def _ca(self) -> CaClient:
        creds = self.store.current
        if creds is None:
            raise CaUnavailable(None, "no_svid", "this sidecar has no SVID yet")
        if self._client is None or self._credentials is not creds:
            await self.aclose()
            self._client = CaClient(
                self.addresses,
                creds.spiffe_id.trust_domain,
                creds.bundles,
                timeout_seconds=self.timeout_seconds,
                clock=self.clock,
            )
            self._credentials = creds
        return self._client

    async def post(
        self, path: str, request: BaseModel, answer: type[Answer], *, wait_seconds: float = 0.0
    ) -> Answer:
        """Send `request` to `path` and return the validated answer. Raises
        `CaClientError` for a refusal (4xx), `CaUnavailable` for anything else."""
        client = await self._ca()
        creds = self.store.current
        assert creds is not None  # checked by _ca
        try:
            raw = await client.call(
                path,
                request.model_dump_json().encode(),
                creds.chain,
                creds.key,
                timeout_seconds=self.timeout_seconds + wait_seconds,
            )
        finally:
            if client is not self._client:  # replaced meanwhile: its pool goes with it
                with trio.CancelScope(shield=True):
                    await client.aclose()
        try:
            return answer.model_validate_json(raw)
        except ValidationError as exc:
            detail = f"{path}: {exc.error_count()} problem(s): {exc.errors()[0]['msg']}"
            raise CaUnavailable(200, "bad_response", detail) from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
