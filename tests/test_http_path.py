"""Path normalization: the one path that is authorized and forwarded."""

from __future__ import annotations

import pytest

from meshgate.http import HttpError, NormalizedTarget, normalize_target

NORMALIZED: list[tuple[str, str, str | None]] = [
    ("/", "/", None),
    ("/public/../admin", "/admin", None),
    ("//admin", "/admin", None),
    ("/a//b///c", "/a/b/c", None),
    ("/a/./b/.", "/a/b/", None),
    ("/a/b/..", "/a/", None),
    ("/a/../", "/", None),
    ("/a//../b", "/b", None),  # slashes collapse before dot-segments are removed
    ("/%41dmin", "/Admin", None),
    ("/p/%2E%2E/admin", "/admin", None),
    ("/a%7eb", "/a~b", None),
    ("/a%3fb", "/a%3Fb", None),  # reserved stays encoded, hex upper-cased
    ("/a%252Fb", "/a%252Fb", None),  # never decoded twice
    ("/admin;x", "/admin;x", None),  # ';' is literal: not /admin
    ("/a;b/c", "/a;b/c", None),
    ("/x?b=2&a=1", "/x", "b=2&a=1"),
    ("/x?", "/x", ""),
    ("/x?q=/../..", "/x", "q=/../.."),  # the query is not a path
    ("/a.b/..c/c..", "/a.b/..c/c..", None),
]

REJECTED: list[tuple[str, str]] = [
    ("/a%2Fb", "encoded slash"),
    ("/a%2fb", "encoded slash"),
    ("/a%5Cb", "encoded slash"),
    ("/a#b", "fragment"),
    ("/a%00b", "control"),
    ("/a%0Ab", "control"),
    ("/a%7Fb", "control"),
    ("/a\x00b", "not allowed"),
    ("/a b", "not allowed"),
    ("/a\\b", "not allowed"),
    ("/caf\xe9", "not allowed"),
    ("/a%zz", "percent"),
    ("/a%4", "percent"),
    ("/x?a=%g1", "percent"),
    ("/..", "above the root"),
    ("/a/../../b", "above the root"),
    ("/%2e%2e/x", "above the root"),
    ("/..;/admin", "dot-segment with parameters"),
    ("/public/..;x/admin", "dot-segment with parameters"),
    ("/.;/admin", "dot-segment with parameters"),
    ("admin", "origin-form"),
    ("http://a/b", "not allowed|origin-form"),
]


@pytest.mark.parametrize(("target", "path", "query"), NORMALIZED)
def test_target_normalizes_to(target: str, path: str, query: str | None) -> None:
    result = normalize_target(target)
    assert result == NormalizedTarget(path, query)
    assert normalize_target(result.target) == result


@pytest.mark.parametrize(("target", "why"), REJECTED)
def test_target_is_rejected(target: str, why: str) -> None:
    with pytest.raises(HttpError, match=why) as info:
        normalize_target(target)
    assert info.value.status_hint == 400


def test_forwarded_target_keeps_the_query() -> None:
    assert normalize_target("/a/../b?x=1").target == "/b?x=1"
    assert normalize_target("/b").target == "/b"
