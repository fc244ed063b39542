"""Stage respond, for issuance: the `SvidResponse` body built from bytes, and the refusal for
a key bound to another ID. Pure.

pydantic validation and serialization of the model cost ~60 µs a response; the chain tail
and the bundle are the same in every response, so their JSON-escaped forms are made once.
(`SvidResponse` stays the schema; a test checks the bytes against it.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.server.loaded_ca import CaAuthority
from mesh_ca.server.messages import ApiError, ApiResponse
from mesh_ca.store import IssuedRecord, KeyBound

__all__ = ["SvidResponder", "key_bound_error", "utc_text"]


@final
class SvidResponder:
    def __init__(self, authority: CaAuthority) -> None:
        chain_tail_pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (authority.signer.cert, *authority.signer.chain)
        ).decode("ascii")
        bundle_pem_text = authority.bundle.roots_pem().decode("ascii")
        self._chain_tail_json = json.dumps(chain_tail_pem)[1:-1].encode("ascii")
        self._bundle_json = (
            b'","bundle_pem":' + json.dumps(bundle_pem_text).encode("ascii") + b',"serial":"'
        )

    def svid(self, leaf: x509.Certificate, record: IssuedRecord, **log: str) -> ApiResponse:
        """The `SvidResponse` JSON. The leaf PEM needs only its newlines escaped; the SPIFFE
        ID was parsed strictly (no quote or backslash can occur); not_after has whole
        seconds, in UTC, as pydantic writes it."""
        serial = format(record.serial, "x")
        spiffe_id = str(record.spiffe_id)
        body = b"".join(
            (
                b'{"spiffe_id":"',
                spiffe_id.encode("ascii"),
                b'","chain_pem":"',
                leaf.public_bytes(serialization.Encoding.PEM).replace(b"\n", b"\\n"),
                self._chain_tail_json,
                self._bundle_json,
                serial.encode("ascii"),
                b'","not_after":"',
                utc_text(record.not_after).encode("ascii"),
                b'"}',
            )
        )
        return ApiResponse(200, body, log={"spiffe_id": spiffe_id, "serial": serial, **log})


def key_bound_error(exc: KeyBound) -> ApiError:
    """The refusal for a key bound to another ID. The other ID is not named: the requester
    only learns the key is taken (the CA's log has both, through the store error)."""
    return ApiError(
        409,
        "key_bound",
        f"the CSR's public key is already bound to another SPIFFE ID than {exc.spiffe_id}; "
        "generate a new key for this workload",
        log={"bound_to": str(exc.bound_to)},
    )


def utc_text(when: datetime) -> str:
    """RFC 3339 UTC as pydantic serializes an aware datetime (``...Z``, microseconds if any)."""
    text = when.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"
