"""Fuzz targets: one function per parser, bytes in, an `AssertionError` on a broken invariant.

Shared by the coverage-guided fuzzer (`scripts/fuzz.py`, atheris) and the property tests
(`tests/test_fuzz_targets.py`, hypothesis), and replayed over the committed corpus
(`tests/fuzz/corpus/<target>/`). Every target checks:
- no crash: the parser refuses with its own error type (`HttpError`, `WireError`,
  `SpiffeIdError`, `BundleError`, `IssuanceError`) or accepts; any other exception
  propagates and is the finding;
- nothing accepted that the strict rules refuse: what a parser accepts is re-checked
  against the rules, written out independently here;
- differential (HTTP): the sidecar reader, the CA reader and llhttp (httptools) agree,
  or the sidecar refuses. Since issue 13 the CA reads with the sidecar's reader and then
  refuses more; the difference must be one of the documented ones (the CA has no chunked
  bodies and takes one Content-Type).
Hangs are caught by the fuzzer's per-input timeout and the tests' deadlines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

import httptools

from mesh_ca.issuance import IssuanceError, Signer, issue_leaf, parse_csr_key
from mesh_ca.server.wire import RequestHead as CaHead
from mesh_ca.server.wire import WireError
from mesh_ca.server.wire import parse_request_head as ca_parse
from meshgate.http import (
    NEED_DATA,
    Data,
    EndOfMessage,
    HttpError,
    HttpLimits,
    InterimResponse,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    normalize_target,
)
from meshgate.http.rules import HttpRuleError, check_line_endings
from meshgate.identity import BundleError, SpiffeId, SpiffeIdError, TrustBundle, TrustDomain
from meshgate.identity.svid import check_leaf_profile, spiffe_id_of

__all__ = ["TARGETS"]

_LIMITS: Final = HttpLimits()
_CA_MAX_BYTES: Final = 16 * 1024
_MAX_EVENTS: Final = 10_000
_TD: Final = TrustDomain("example.org")
_NOW: Final = datetime(2030, 1, 1, tzinfo=UTC)

# -- the strict request rules, written out again (not imported from the readers) ---------
_TCHAR: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_ORIGIN: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_PCT_OK: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_FIELD: Final = re.compile(f"({_TCHAR}+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")


def _strict_request_head(head: bytes) -> tuple[str, str, dict[str, list[str]]]:
    """(method, target, lower-cased header values) of a head that keeps every rule of
    meshgate/http/rules.py and meshgate/http/head.py; AssertionError naming the broken one."""
    assert head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n"), "bare CR or LF"
    text = head.decode("latin-1")
    line, *fields = text.split("\r\n")
    parts = line.split(" ")
    assert len(parts) == 3, f"request line {line[:60]!r}"
    method, target, version = parts
    assert re.fullmatch(f"{_TCHAR}+", method), "method is not a token"
    assert version in ("HTTP/1.0", "HTTP/1.1"), f"version {version[:20]!r}"
    assert _ORIGIN.fullmatch(target), f"target {target[:60]!r} is not origin-form"
    assert target.count("%") == len(_PCT_OK.findall(target)), "bad percent-escape"
    values: dict[str, list[str]] = {}
    for field in fields:
        match = _FIELD.fullmatch(field)
        assert match, f"header line {field[:60]!r}"
        values.setdefault(match.group(1).lower(), []).append(match.group(2))
    hosts = values.get("host", [])
    assert len(hosts) <= 1, "two Host headers"
    assert hosts or version == "HTTP/1.0", "HTTP/1.1 without Host"
    lengths = values.get("content-length", [])
    assert len(lengths) <= 1, "two Content-Length headers"
    assert not lengths or re.fullmatch("[0-9]{1,18}", lengths[0]), "Content-Length"
    assert not (lengths and "transfer-encoding" in values), "CL with TE"
    assert not (version == "HTTP/1.0" and "transfer-encoding" in values), "TE in HTTP/1.0"
    return method, target, values


def _head_bytes(data: bytes) -> bytes | None:
    end = data.find(b"\r\n\r\n")
    return data[:end] if end >= 0 else None


def _sidecar_first_head(data: bytes) -> RequestHead | HttpError | None:
    """The sidecar's verdict on the first request in `data` (None: needs more bytes)."""
    reader = RequestReader(_LIMITS)
    reader.feed(data)
    try:
        event = reader.next_event()
    except HttpError as exc:
        return exc
    if event is NEED_DATA:
        return None
    assert isinstance(event, RequestHead), f"first event {event!r}"
    return event


def _llhttp_accepts(head: bytes, *, request: bool) -> bool:
    class Sink:
        done = False

        def on_headers_complete(self) -> None:
            self.done = True

    sink = Sink()
    parser = httptools.HttpRequestParser(sink) if request else httptools.HttpResponseParser(sink)
    try:
        parser.feed_data(head + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        return sink.done
    except httptools.HttpParserError:
        return False
    return sink.done


def _drain(reader: RequestReader | ResponseReader) -> None:
    """Read events until the reader needs data or refuses; bounded (no hang)."""
    for _ in range(_MAX_EVENTS):
        event = reader.next_event()
        if event is NEED_DATA or not isinstance(
            event, RequestHead | ResponseHead | InterimResponse | Data | EndOfMessage
        ):
            return
    raise AssertionError("reader produced more events than bytes could justify")


# -- targets ---------------------------------------------------------------------------------


def http_request(data: bytes) -> None:
    """The sidecar request reader, the CA reader and llhttp on the same bytes."""
    reader = RequestReader(_LIMITS)
    reader.feed(data)
    reader.feed_eof()
    try:
        _drain(reader)
    except HttpError as exc:
        assert 400 <= exc.status_hint < 600, exc.status_hint
    head = _head_bytes(data)
    if head is None or len(head) + 4 > _LIMITS.max_head_bytes:
        return
    sidecar = _sidecar_first_head(data)
    try:
        ca: CaHead | WireError | None = ca_parse(data, max_bytes=_CA_MAX_BYTES, max_headers=100)
    except WireError as exc:
        ca = exc
    if isinstance(sidecar, RequestHead):
        method, target, values = _strict_request_head(head)
        assert _llhttp_accepts(head, request=True), "sidecar accepted what llhttp refuses"
        if isinstance(ca, CaHead):
            assert (ca.method, ca.target) == (sidecar.method, sidecar.target)
            lengths = values.get("content-length", ["0"])
            assert ca.content_length == int(lengths[0])
            hosts = values.get("host", [])
            assert ca.headers.get("host") == (hosts[0] if hosts else None)
        else:
            # The CA is stricter only where it says so: no chunked bodies (501), one
            # Content-Type.
            assert isinstance(ca, WireError)
            assert "transfer-encoding" in values or len(values.get("content-type", [])) > 1, (
                f"CA refused a head the sidecar accepts: {ca} ({target[:40]!r} {method[:16]!r})"
            )
    elif isinstance(ca, CaHead):
        _strict_request_head(head)  # the CA accepted: the rules must hold
        # The sidecar may refuse what the CA takes only for its own caps and method list,
        # and `_` look-alikes of headers it owns (it forwards to apps that may read `_` as
        # `-`; the CA forwards nothing, so such a name is just an unknown header there).
        assert isinstance(sidecar, HttpError), "sidecar needs more bytes for a complete head"
        look_alike = "_" in head.decode("latin-1") and "looks like" in str(sidecar)
        assert look_alike or sidecar.status_hint in (413, 414, 431, 501), (
            f"sidecar refused ({sidecar}) a head the CA accepts"
        )


def ca_request(data: bytes) -> None:
    """The CA reader alone, over any bytes (its own caps)."""
    try:
        head = ca_parse(data, max_bytes=1024, max_headers=16)
    except WireError as exc:
        assert exc.status in (400, 431, 414, 501, 505), exc.status
        return
    if head is None:
        assert b"\r\n\r\n" not in data[:1028]
        return
    raw = data[: head.size - 4]
    _strict_request_head(raw)
    assert 0 <= head.content_length < 10**18
    assert head.size <= len(data)


def http_response(data: bytes) -> None:
    """The sidecar response reader (to a GET and to a HEAD) against llhttp."""
    for method in ("GET", "HEAD"):
        reader = ResponseReader(HttpLimits(max_body_bytes=None))
        reader.expect(method)
        reader.feed(data)
        reader.feed_eof()
        try:
            first = reader.next_event()
            if isinstance(first, ResponseHead | InterimResponse):
                head = _head_bytes(data)
                assert head is not None
                check_line_endings(head, "response")
                assert _llhttp_accepts(head, request=False), "accepted what llhttp refuses"
            _drain(reader)
        except HttpError as exc:
            assert exc.status_hint == 502, exc.status_hint
        except HttpRuleError as exc:
            raise AssertionError(f"accepted response head breaks a rule: {exc}") from exc


def path(data: bytes) -> None:
    """Path normalization: refused with 400, or clean and idempotent."""
    target = data.decode("latin-1")
    try:
        result = normalize_target(target)
    except HttpError as exc:
        assert exc.status_hint == 400, exc.status_hint
        return
    normalized = result.path
    assert normalized.startswith("/")
    assert "//" not in normalized
    segments = normalized.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert all(0x20 < ord(c) < 0x7F for c in result.target), "unsafe byte in the target"
    assert "#" not in result.target
    assert normalize_target(result.target) == result, "not idempotent"


_SPIFFE_RE: Final = re.compile(r"spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)*", re.ASCII)


def spiffe_id(data: bytes) -> None:
    """The SPIFFE ID parser: refused, or exactly the spec's grammar and a round trip."""
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert _SPIFFE_RE.fullmatch(text), f"accepted {text[:80]!r}"
    assert len(text.encode()) <= 2048
    segments = text[len("spiffe://") :].split("/")[1:]
    assert all(s not in (".", "..") for s in segments), "dot segment accepted"
    assert str(parsed) == text
    assert SpiffeId.parse(str(parsed)) == parsed


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(set(names)) == len(names), "duplicate JSON member accepted"
    return dict(pairs)


def bundle(data: bytes) -> None:
    """The SPIFFE bundle parser: refused, or spec-exact and stable through its own JSON."""
    try:
        parsed = TrustBundle.from_spiffe_json(_TD, data)
    except BundleError:
        return
    document = json.loads(data, object_pairs_hook=_unique)
    assert isinstance(document, dict)
    assert isinstance(document.get("keys"), list)
    assert parsed.untrusted == (not parsed.roots)
    for name in ("spiffe_sequence", "spiffe_refresh_hint"):
        value = document.get(name)
        assert value is None or (type(value) is int and value >= 0), name
    again = TrustBundle.from_spiffe_json(_TD, json.dumps(parsed.to_spiffe_json()))
    assert again.roots == parsed.roots
    assert again.sequence == parsed.sequence


@cache
def _signer() -> Signer:
    from tests.pki import TestPki

    return TestPki(now=_NOW).signer


def csr(data: bytes) -> None:
    """CSR handling: refused, or signed into a leaf whose identity is only ours."""
    try:
        request, public = parse_csr_key(data)
    except IssuanceError:
        return
    assert request.is_signature_valid
    assert public.curve.name in ("secp256r1", "secp384r1")
    wanted = SpiffeId.workload(_TD, "fuzz", "csr")
    leaf = issue_leaf(request, wanted, _signer(), _NOW, csr_verified=True, public_key=public)
    check_leaf_profile(leaf)
    assert spiffe_id_of(leaf) == wanted  # whatever SANs or extensions the CSR asked for


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "http_request": http_request,
    "http_response": http_response,
    "ca_request": ca_request,
    "path": path,
    "spiffe_id": spiffe_id,
    "bundle": bundle,
    "csr": csr,
}
