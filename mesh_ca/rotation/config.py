"""``[rotation]`` of ca.toml: automatic intermediate rotation's lifetimes and lead times."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesh_ca.rotation.slots import RotationPolicy

__all__ = ["RotationConfig"]

_DAY = 86400


class RotationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    enabled: Annotated[
        bool,
        Field(
            description=(
                "rotate the intermediate automatically (prepare, activate, retire); needs "
                'keys.backend = "file" and the root key in the CA directory'
            )
        ),
    ] = True
    intermediate_ttl_seconds: Annotated[
        int,
        Field(
            ge=3,
            le=3650 * _DAY,
            description=(
                "lifetime of an intermediate: it is replaced this long after its notBefore "
                "(or at its notAfter, if earlier); also the lifetime `mesh-ca init` gives it"
            ),
        ),
    ] = 30 * _DAY
    prepare_lead_seconds: Annotated[
        int,
        Field(
            ge=2,
            description=(
                "prepare and publish the next intermediate this long before the active one's "
                "end; sidecars learn it at their next poll"
            ),
        ),
    ] = 15 * _DAY
    activate_lead_seconds: Annotated[
        int,
        Field(
            ge=1,
            description=(
                "switch signing to the prepared intermediate this long before the active "
                "one's end; prepare_lead - activate_lead must exceed the sidecars' "
                "poll_interval_seconds"
            ),
        ),
    ] = 5 * _DAY
    check_interval_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description=(
                "how often each replica reloads the trust state from the store and checks "
                "for a due step"
            ),
        ),
    ] = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> RotationConfig:
        if not (
            self.activate_lead_seconds < self.prepare_lead_seconds < self.intermediate_ttl_seconds
        ):
            raise ValueError(
                "need activate_lead_seconds < prepare_lead_seconds < intermediate_ttl_seconds"
            )
        return self

    @property
    def policy(self) -> RotationPolicy:
        return RotationPolicy(
            intermediate_ttl=timedelta(seconds=self.intermediate_ttl_seconds),
            prepare_lead=timedelta(seconds=self.prepare_lead_seconds),
            activate_lead=timedelta(seconds=self.activate_lead_seconds),
            # Replicas see a change at their next check: a lagging one may sign with the old
            # intermediate that long after it was deactivated.
            replica_lag=timedelta(seconds=2 * self.check_interval_seconds),
        )
