"""``[federation]`` of ca.toml: the foreign trust domains this mesh trusts, and how their
bundles are obtained. Re-read while the CA runs (`mesh_ca.federation.refresh`), so adding or
removing a trust domain needs no restart."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshgate.config_file import TrustDomainName
from meshgate.identity import SpiffeId, SpiffeIdError, TrustDomain
from meshgate.identity.federation import FederationError, parse_endpoint_url

__all__ = ["FederatedDomainConfig", "FederationConfig", "check_federation"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FederatedDomainConfig(_Model):
    trust_domain: Annotated[
        TrustDomainName, Field(description="the foreign trust domain whose SVIDs this mesh accepts")
    ]
    bundle_file: Annotated[
        str | None,
        Field(
            description=(
                "its bundle (SPIFFE JSON or PEM roots), relative to the CA directory. Without "
                "bundle_endpoint_url the bundle comes only from this file, re-read at every "
                "refresh; with it, the bundle that authenticates the endpoint's first fetch"
            )
        ),
    ] = None
    bundle_endpoint_url: Annotated[
        str | None,
        Field(
            description=(
                "https URL of the foreign CA's bundle endpoint (a meshgate CA serves "
                "https://HOST:PORT/v1/bundle); fetched at the bundle's spiffe_refresh_hint"
            )
        ),
    ] = None
    bundle_endpoint_profile: Annotated[
        Literal["https_spiffe"],
        Field(
            description=(
                "how the endpoint is authenticated: https_spiffe, by an X509-SVID for "
                "endpoint_spiffe_id verified against a bundle already held for its trust domain"
            )
        ),
    ] = "https_spiffe"
    endpoint_spiffe_id: Annotated[
        str | None,
        Field(
            description=(
                "SPIFFE ID the bundle endpoint must present (a meshgate CA: "
                "spiffe://TD/mesh/ca); required with bundle_endpoint_url"
            )
        ),
    ] = None
    refresh_seconds: Annotated[
        int | None,
        Field(
            ge=1,
            le=86400,
            description="fetch or re-read this often instead of the bundle's spiffe_refresh_hint",
        ),
    ] = None

    @field_validator("endpoint_spiffe_id")
    @classmethod
    def _check_endpoint_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(SpiffeId.parse(value))
        except SpiffeIdError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("bundle_endpoint_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_endpoint_url(value)
            except FederationError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _source(self) -> FederatedDomainConfig:
        if self.bundle_endpoint_url is None and self.bundle_file is None:
            raise ValueError(
                f"{self.trust_domain}: needs bundle_file, bundle_endpoint_url, or both"
            )
        if self.bundle_endpoint_url is not None and self.endpoint_spiffe_id is None:
            raise ValueError(
                f"{self.trust_domain}: bundle_endpoint_url needs endpoint_spiffe_id "
                "(https_spiffe authenticates the endpoint by its SPIFFE ID)"
            )
        return self

    @property
    def domain(self) -> TrustDomain:
        return TrustDomain(self.trust_domain)

    @property
    def endpoint_id(self) -> SpiffeId | None:
        return SpiffeId.parse(self.endpoint_spiffe_id) if self.endpoint_spiffe_id else None


class FederationConfig(_Model):
    check_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=3600,
            description=(
                "how often `mesh-ca serve` re-reads [federation] from ca.toml: a trust domain "
                "removed there is no longer served to sidecars after at most this long"
            ),
        ),
    ] = 5
    trust_domains: Annotated[
        tuple[FederatedDomainConfig, ...],
        Field(description="[[federation.trust_domains]]: one table per federated trust domain"),
    ] = ()

    @field_validator("trust_domains", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _unique(self) -> FederationConfig:
        seen: set[str] = set()
        for entry in self.trust_domains:
            if entry.trust_domain in seen:
                raise ValueError(f"trust domain {entry.trust_domain} is listed twice")
            seen.add(entry.trust_domain)
        return self


def check_federation(own: str, federation: FederationConfig) -> None:
    """Raise `ValueError` unless every relationship is with another trust domain and its
    bundle endpoint can be authenticated: a self-serving endpoint needs ``bundle_file`` (for
    the first fetch), any other endpoint ID must be in `own` or another federated domain."""
    listed = {entry.trust_domain for entry in federation.trust_domains}
    for entry in federation.trust_domains:
        where = f"federation.trust_domains: {entry.trust_domain}"
        if entry.trust_domain == own:
            raise ValueError(
                f"{where} is this CA's own trust domain (its bundle is this CA's, never fetched)"
            )
        endpoint = entry.endpoint_id
        if endpoint is None:
            continue
        held = endpoint.trust_domain.name
        if held == entry.trust_domain and entry.bundle_file is None:
            raise ValueError(
                f"{where}: a self-serving bundle endpoint ({endpoint}) needs bundle_file, the "
                "bundle that authenticates its first fetch"
            )
        if held != own and held not in listed:
            raise ValueError(
                f"{where}: endpoint_spiffe_id {endpoint} is in {held}, for which this CA holds "
                "no bundle (its own trust domain, the fetched one, or another federated one)"
            )
