"""``[control]`` of ca.toml: the control plane inside `mesh-ca serve` (docs/control-plane.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ControlConfig"]


class ControlConfig(BaseModel):
    """Registration leases, per-ID limits and the central policy directory."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    policy_dir: Annotated[
        str | None,
        Field(
            description=(
                "the central policy directory (relative to the CA directory): *.cedar, one "
                "*.cedarschema, entities.json. Decides who may register (action register on "
                'Service::"S") and is published to sidecars with [policy] source = '
                '"control-plane". Unset: every registration is refused (default deny) and '
                "no policy set is published"
            )
        ),
    ] = None
    lease_ttl_seconds: Annotated[
        int,
        Field(
            ge=3,
            le=3600,
            description="how long a registration lives without renewal; an expired one leaves "
            "the endpoint set",
        ),
    ] = 15
    renew_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=1200,
            description="how often a sidecar renews its registration (at most a third of "
            "lease_ttl_seconds, so two renewals may fail before the lease ends)",
        ),
    ] = 5
    max_registrations_per_id: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="registrations one SPIFFE ID may hold at once (429 beyond)",
        ),
    ] = 16
    policy_poll_seconds: Annotated[
        float,
        Field(
            ge=0.05,
            le=60,
            description="how often the policy directory is checked for changes",
        ),
    ] = 0.5

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> ControlConfig:
        if self.renew_seconds * 3 > self.lease_ttl_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds}) must be at most a third of "
                f"lease_ttl_seconds ({self.lease_ttl_seconds})"
            )
        return self
