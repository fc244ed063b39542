"""SPIFFE ID parsing: round trips of valid IDs and rejection of every malformed form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.identity import MAX_SPIFFE_ID_BYTES, SpiffeId, SpiffeIdError, TrustDomain

TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
SEGMENT_CHARS = TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

trust_domains = st.text(TD_CHARS, min_size=1, max_size=40)
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, max_size=8).map(lambda segs: "".join(f"/{s}" for s in segs))
valid_ids = st.builds(lambda td, path: f"spiffe://{td}{path}", trust_domains, paths)
workload_ids = st.builds(lambda td, path: f"spiffe://{td}{path}", trust_domains, paths.filter(bool))


def rejected(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(text)


@given(valid_ids)
def test_valid_ids_round_trip(text: str) -> None:
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid
    assert SpiffeId(sid.trust_domain, sid.path) == sid


@given(trust_domains, st.lists(segments, max_size=6))
def test_from_segments_formats_what_parse_reads(td: str, segs: list[str]) -> None:
    sid = SpiffeId.from_segments(td, *segs)
    assert sid.segments == tuple(segs)
    assert SpiffeId.parse(str(sid)) == sid


@given(trust_domains, segments, segments)
def test_workload_convention_exposes_namespace_and_service(td: str, ns: str, svc: str) -> None:
    sid = SpiffeId.parse(f"spiffe://{td}/ns/{ns}/svc/{svc}")
    assert (sid.namespace, sid.service) == (ns, svc)
    assert sid == SpiffeId.workload(td, ns, svc)


@given(
    trust_domains, paths, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=3), st.data()
)
def test_uppercase_trust_domain_is_rejected(
    td: str, path: str, upper: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(td)))
    rejected(f"spiffe://{td[:at]}{upper}{td[at:]}{path}")


@given(trust_domains, paths, st.integers(0, 65535))
def test_port_is_rejected(td: str, path: str, port: int) -> None:
    rejected(f"spiffe://{td}:{port}{path}")


@given(trust_domains, paths, st.text(TD_CHARS, min_size=1, max_size=10))
def test_userinfo_is_rejected(td: str, path: str, user: str) -> None:
    rejected(f"spiffe://{user}@{td}{path}")
    rejected(f"spiffe://{user}:pw@{td}{path}")


@given(trust_domains, paths, st.sampled_from(["%2F", "%41", "%2e", "%"]))
def test_percent_encoding_is_rejected(td: str, path: str, escape: str) -> None:
    rejected(f"spiffe://{td}{path}/a{escape}b")
    rejected(f"spiffe://{td}{escape}{path}")


@given(valid_ids, st.sampled_from(["?", "?a=b", "#", "#frag", "/?x", "/#x"]))
def test_query_and_fragment_are_rejected(text: str, suffix: str) -> None:
    rejected(text + suffix)


@given(trust_domains, st.lists(segments, min_size=1, max_size=4), st.data())
def test_empty_dot_and_dotdot_segments_are_rejected(
    td: str, segs: list[str], data: st.DataObject
) -> None:
    bad = data.draw(st.sampled_from(["", ".", ".."]))
    at = data.draw(st.integers(0, len(segs)))
    broken = [*segs[:at], bad, *segs[at:]]
    rejected(f"spiffe://{td}" + "".join(f"/{s}" for s in broken))


@given(valid_ids)
def test_trailing_slash_is_rejected(text: str) -> None:
    rejected(text + "/")


@given(valid_ids, st.sampled_from(["\n", "\r\n", "\r", " ", "\t", "\x00"]))
def test_trailing_newline_and_whitespace_are_rejected(text: str, tail: str) -> None:
    rejected(text + tail)


@given(
    workload_ids,
    st.sampled_from(
        ["SPIFFE://", "Spiffe://", "spiffE://", "spiffe:/", "spiffe:", "https://", "//", ""]
    ),
)
def test_wrong_scheme_is_rejected(text: str, scheme: str) -> None:
    rejected(scheme + text.removeprefix("spiffe://"))


@given(valid_ids, st.characters(min_codepoint=0x80, exclude_categories=["Cs"]))
def test_non_ascii_is_rejected(text: str, char: str) -> None:
    rejected(text + "/x" + char)


def test_length_limit_is_exactly_2048_bytes() -> None:
    prefix = "spiffe://example.org/"
    at_limit = prefix + "a" * (MAX_SPIFFE_ID_BYTES - len(prefix))
    assert len(at_limit.encode()) == MAX_SPIFFE_ID_BYTES
    assert str(SpiffeId.parse(at_limit)) == at_limit
    rejected(at_limit + "b")
    rejected(prefix + "/".join(["abcdefg"] * 400))


def test_empty_trust_domain_and_empty_string_are_rejected() -> None:
    for text in ("", "spiffe://", "spiffe:///path", "spiffe://example.org/"):
        rejected(text)


def test_non_string_is_rejected() -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(b"spiffe://example.org/x")  # type: ignore[arg-type]


@given(trust_domains)
def test_trust_domain_accepts_bare_name_and_id_form(td: str) -> None:
    assert TrustDomain.parse(td) == TrustDomain(td)
    assert TrustDomain.parse(f"spiffe://{td}") == TrustDomain(td)
    with pytest.raises(SpiffeIdError):
        TrustDomain.parse(f"spiffe://{td}/path")
    with pytest.raises(SpiffeIdError):
        TrustDomain(td + ":443")
