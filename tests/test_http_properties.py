"""Properties of the HTTP request checks and path normalization (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.http import (
    CONNECTION_CLOSED,
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    HttpError,
    NormalizedTarget,
    RequestHead,
    RequestReader,
    encode_chunk,
    normalize_target,
    serialize_request_head,
)
from tests.http_helpers import read_requests

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_PCHARS = "abcAZ09-._~!$&'()*+,;=:@%/?#\\ \x00\x1f\x7f\xe9"
_ESCAPES = ["%2F", "%2f", "%5C", "%2E", "%2e", "%41", "%7E", "%25", "%00", "%3F", "%zz", "%"]
targets = st.lists(
    st.one_of(
        st.sampled_from(["/", "//", ".", "..", "/./", "/../", ";", "?", *_ESCAPES]),
        st.text(alphabet=_PCHARS, max_size=4),
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


def _assert_clean(result: NormalizedTarget) -> None:
    path = result.path
    assert path.startswith("/")
    assert "//" not in path
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F or ord(c) > 0x7E for c in result.target)
    assert "#" not in result.target
    assert "\\" not in result.target


@FAST
@given(targets)
def test_normalization_is_idempotent_and_clean(target: str) -> None:
    try:
        result = normalize_target(target)
    except HttpError as exc:
        assert exc.status_hint == 400  # noqa: PT017 (most inputs are valid; raises is wrong here)
        return
    _assert_clean(result)
    assert normalize_target(result.target) == result


_TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=12
)
_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
)
_FRAMING_NAMES = {"content-length", "transfer-encoding", "host"}


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Requests that are mostly valid, with random headers, framing and bodies."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
    target = draw(targets.filter(lambda t: "#" not in t and "\\" not in t))
    version = draw(st.sampled_from(["1.0", "1.1"]))
    headers = [("Host", draw(st.sampled_from(["a", "svc.ns:8080", "[::1]:1"])))]
    for name, value in draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=6)):
        if name.lower() not in _FRAMING_NAMES:
            headers.append((name, value))
    body = draw(st.binary(max_size=40))
    kind = draw(
        st.sampled_from(["none", "length", "chunked"] if version == "1.1" else ["none", "length"])
    )
    if kind == "length":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif kind == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        payload = encode_chunk(body[:7]) + encode_chunk(body[7:]) + LAST_CHUNK
    else:
        payload = b""
    lines = [f"{method} {target} HTTP/{version}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _framing_free(head: RequestHead) -> tuple[tuple[str, str], ...]:
    return tuple(h for h in head.headers if h[0] not in ("content-length", "transfer-encoding"))


@FAST
@given(requests())
def test_accepted_requests_reserialize_to_the_same_head(wire: bytes) -> None:
    try:
        events = read_requests(wire, eof=True)
    except HttpError:
        return
    first = events[0]
    assert isinstance(first, RequestHead)
    body = b"".join(e.data for e in events if isinstance(e, Data))
    rebuilt = serialize_request_head(
        first.method, first.target, first.headers, first.framing, first.version
    )
    if first.framing.kind is BodyKind.CHUNKED:
        rebuilt += encode_chunk(body) + LAST_CHUNK
    else:
        rebuilt += body
    again = read_requests(rebuilt, eof=True)
    second = again[0]
    assert isinstance(second, RequestHead)
    assert (second.method, second.target, second.version, second.framing, second.keep_alive) == (
        first.method,
        first.target,
        first.version,
        first.framing,
        first.keep_alive,
    )
    assert _framing_free(second) == _framing_free(first)
    assert b"".join(e.data for e in again if isinstance(e, Data)) == body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(requests()) * draw(st.integers(1, 2)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(wire)))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 35, 58, 127, 0xE9, ord("0"), ord("f")]))
        if op == "insert" or at == len(wire):
            wire.insert(at, byte)
        elif op == "flip":
            wire[at] = byte
        else:
            del wire[at]
    return bytes(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(1, 64))
def test_mutated_requests_never_crash_the_reader(wire: bytes, step: int) -> None:
    reader = RequestReader()
    try:
        for i in range(0, len(wire), step):
            reader.feed(wire[i : i + step])
            while (event := reader.next_event()) not in (NEED_DATA, CONNECTION_CLOSED):
                assert isinstance(event, RequestHead | Data | EndOfMessage)
        reader.feed_eof()
        while (event := reader.next_event()) is not CONNECTION_CLOSED:
            assert isinstance(event, RequestHead | Data | EndOfMessage)
    except HttpError as exc:
        assert exc.status_hint in (400, 413, 414, 431, 501, 505)  # noqa: PT017
