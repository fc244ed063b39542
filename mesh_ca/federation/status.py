"""What `mesh-ca status` says about federation: each configured trust domain, where its
bundle comes from, and the latest bundle the serving CA fetched (``federation/TD.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mesh_ca.federation.config import FederationConfig
from mesh_ca.federation.state import stored_bundle_path
from meshgate.identity import BundleError, TrustBundle

__all__ = ["federation_lines", "federation_status"]


def federation_status(ca_path: Path, config: FederationConfig) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for entry in config.trust_domains:
        row: dict[str, Any] = {
            "trust_domain": entry.trust_domain,
            "bundle_endpoint_url": entry.bundle_endpoint_url,
            "endpoint_spiffe_id": entry.endpoint_spiffe_id,
            "bundle_file": entry.bundle_file,
            "fetched": None,
        }
        stored = stored_bundle_path(ca_path, entry.trust_domain)
        try:
            bundle = TrustBundle.from_spiffe_json(entry.domain, stored.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, BundleError) as exc:
            row["fetched"] = {"error": str(exc)}
        else:
            row["fetched"] = {
                "roots": len(bundle.roots),
                "spiffe_sequence": bundle.sequence,
                "refresh_hint_seconds": bundle.refresh_hint_seconds,
                "root_not_after": [r.not_valid_after_utc.isoformat() for r in bundle.roots],
            }
        rows.append(row)
    return rows


def federation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The text form: one line per trust domain, then its source."""
    lines = [f"federation     {len(rows)} trust domain(s)"]
    for row in rows:
        source = row["bundle_endpoint_url"] or f"file {row['bundle_file']}"
        fetched = row["fetched"]
        if fetched is None:
            state = "not fetched yet" if row["bundle_endpoint_url"] else "read from its file"
        elif "error" in fetched:
            state = f"stored bundle unreadable: {fetched['error']}"
        else:
            state = (
                f"{fetched['roots']} root(s), spiffe_sequence {fetched['spiffe_sequence']}, "
                f"refresh hint {fetched['refresh_hint_seconds']} s"
            )
        lines.append(f"  {row['trust_domain']}  from {source}: {state}")
    return lines
