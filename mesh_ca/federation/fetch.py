"""Fetch a foreign trust domain's bundle from its bundle endpoint, ``https_spiffe`` profile.

SPIFFE Federation 5.2.2.4: the endpoint's server certificate must be a valid X509-SVID for
the configured endpoint SPIFFE ID, verified against the bundle held for that ID's trust
domain (for a self-serving endpoint: the latest bundle fetched from it, or the operator's
bootstrap bundle before the first fetch). OpenSSL is given only that trust domain's roots,
then the leaf is re-checked as an SVID (profile, time, path to that bundle alone, the ID).
No client certificate is sent (5.2.2.3: endpoints must not require one). Redirects are
not followed: a 3xx is an error naming the status. The trio shell; parsing is
`meshgate.identity.bundle`'s.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Final

import h11
import trio

from meshgate.errors import TransportError
from meshgate.identity import (
    BundleError,
    BundleSet,
    SpiffeId,
    SvidError,
    TrustBundle,
    TrustDomain,
    verify_svid,
)
from meshgate.identity.federation import EndpointUrl
from meshgate.transport.mtls import client_context, presented_intermediates
from meshgate.transport.tls_stream import TlsError, TlsStream

__all__ = ["BundleFetchError", "fetch_bundle"]

_MAX_BODY_BYTES: Final = 1024 * 1024


class BundleFetchError(TransportError):
    """The bundle could not be fetched or was refused; the message names the endpoint."""


async def fetch_bundle(
    url: EndpointUrl,
    trust_domain: TrustDomain,
    endpoint_id: SpiffeId,
    endpoint_bundle: TrustBundle,
    now: datetime,
    *,
    timeout_seconds: float = 10.0,
) -> TrustBundle:
    """GET `url` over TLS authenticated as `endpoint_id` against `endpoint_bundle` (the
    bundle of the endpoint ID's own trust domain); the answer is `trust_domain`'s bundle."""
    where = f"bundle endpoint {url.url} ({endpoint_id})"
    if endpoint_bundle.trust_domain != endpoint_id.trust_domain:
        raise BundleFetchError(
            f"{where}: the bundle to authenticate it is for {endpoint_bundle.trust_domain}, "
            f"not {endpoint_id.trust_domain}"
        )
    if endpoint_bundle.untrusted:
        raise BundleFetchError(f"{where}: no X.509 authority known for {endpoint_id.trust_domain}")
    bundles = BundleSet.of(endpoint_bundle)
    try:
        with trio.fail_after(timeout_seconds):
            body = await _get(url, bundles, endpoint_id, now, where)
    except trio.TooSlowError:
        raise BundleFetchError(f"{where}: no answer within {timeout_seconds:g} s") from None
    try:
        return TrustBundle.from_spiffe_json(trust_domain, body)
    except BundleError as exc:
        raise BundleFetchError(f"{where}: {exc}") from exc


async def _get(
    url: EndpointUrl, bundles: BundleSet, endpoint_id: SpiffeId, now: datetime, where: str
) -> bytes:
    try:
        tcp = await trio.open_tcp_stream(url.host, url.port)
    except OSError as exc:
        raise BundleFetchError(f"{where}: cannot connect: {exc.strerror or exc}") from exc
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # noqa: FBT003
    stream = TlsStream(tcp, client_context(bundles), server_side=False)
    try:
        try:
            await stream.do_handshake()
        except TlsError as exc:
            raise BundleFetchError(f"{where}: TLS handshake failed: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BundleFetchError(f"{where}: closed during the TLS handshake") from exc
        _check_endpoint(stream, bundles, endpoint_id, now, where)
        return await _exchange(stream, url, where)
    finally:
        await trio.aclose_forcefully(stream)


def _check_endpoint(
    stream: TlsStream, bundles: BundleSet, endpoint_id: SpiffeId, now: datetime, where: str
) -> None:
    from cryptography import x509

    der = stream.getpeercert(binary_form=True)
    if not isinstance(der, bytes) or not der:
        raise BundleFetchError(f"{where}: presented no certificate")
    try:
        leaf = x509.load_der_x509_certificate(der)
        verified = verify_svid(leaf, presented_intermediates(stream, der), bundles, now)
    except (ValueError, SvidError) as exc:
        raise BundleFetchError(f"{where}: server certificate refused: {exc}") from exc
    if verified.spiffe_id != endpoint_id:
        raise BundleFetchError(f"{where}: presented {verified.spiffe_id}, not {endpoint_id}")


async def _exchange(stream: TlsStream, url: EndpointUrl, where: str) -> bytes:
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=url.target,
        headers=[("host", url.authority), ("accept", "application/json"), ("connection", "close")],
    )
    try:
        await stream.send_all((http.send(request) or b"") + (http.send(h11.EndOfMessage()) or b""))
        status: int | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_BODY_BYTES:
                    raise BundleFetchError(f"{where}: answer larger than {_MAX_BODY_BYTES} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except h11.ProtocolError as exc:
        raise BundleFetchError(f"{where}: bad HTTP answer: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise BundleFetchError(f"{where}: connection lost: {exc}") from exc
    if status != 200:
        raise BundleFetchError(f"{where}: answered HTTP {status}, not 200")
    return b"".join(chunks)
