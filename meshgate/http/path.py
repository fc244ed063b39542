"""Request-target normalization: the one path that is both authorized and forwarded.

Pure. Decided once, here, and nowhere else (decisions and reasons in docs/http-parser.md):
- Percent-encoded unreserved characters are decoded (`%41` → `A`, `%2e` → `.`); other
  escapes are kept, hex upper-cased (`%3f` → `%3F`). Never decoded twice (`%252F` stays).
- `%2F` and `%5C` (encoded `/` and `\\`) are rejected: backends disagree on whether they
  separate segments, so any choice we made could differ from the app's.
- Encoded NUL and control bytes (`%00`-`%1F`, `%7F`) are rejected, as are raw ones, `#`,
  spaces, backslashes and anything outside RFC 3986.
- Duplicate slashes are collapsed first, then dot-segments are removed (RFC 3986 5.2.4).
  `..` above the root is rejected (400), not clamped: no honest client sends it.
- `;` is a literal path character: `/admin;x` is not `/admin`. A dot-segment carrying
  parameters (`/..;x/`, `/.;/`) is rejected: servlet containers treat it as `..`.
- The query is kept as sent (checked, not decoded or reordered).
Fails closed: every rejection raises `HttpError(400, ...)`.
"""

from __future__ import annotations

import re
from typing import Final, final

from meshgate.http.errors import HttpError
from meshgate.records import record

__all__ = ["NormalizedTarget", "normalize_target"]

_ALLOWED_RE: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_PERCENT_RE: Final = re.compile(r"%(.?.?)")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES_RE: Final = re.compile(r"/{2,}")


@final
@record(frozen=True, slots=True)
class NormalizedTarget:
    """`path` starts with `/`, holds no `//`, `.` or `..` segment; `query` is None when the
    target had no `?`."""

    path: str
    query: str | None

    @property
    def target(self) -> str:
        """What to put in the forwarded request line."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def _bad(reason: str) -> HttpError:
    return HttpError(400, reason)


def _decode_escape(m: re.Match[str]) -> str:
    hexdigits = m.group(1)
    if len(hexdigits) != 2 or not set(hexdigits) <= _HEX:
        raise _bad("malformed percent-encoding in the path")
    code = int(hexdigits, 16)
    char = chr(code)
    if char in _UNRESERVED:
        return char
    if char in "/\\":
        raise _bad("encoded slash or backslash (%2F, %5C) in the path")
    if code < 0x20 or code == 0x7F:
        raise _bad("encoded control byte in the path")
    return "%" + hexdigits.upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path that starts with `/` and holds no `//`; `..` above the root
    is an error."""
    out: list[str] = []
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment.partition(";")[0] in (".", "..") and ";" in segment:
            raise _bad("dot-segment with parameters in the path")
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if not out:
                raise _bad("'..' climbs above the root")
            out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _check_query(query: str) -> None:
    for m in _PERCENT_RE.finditer(query):
        hexdigits = m.group(1)
        if len(hexdigits) != 2 or not set(hexdigits) <= _HEX:
            raise _bad("malformed percent-encoding in the query")


def normalize_target(target: str) -> NormalizedTarget:
    """Normalize an origin-form request target (see the module docstring). Fails closed."""
    if "#" in target:
        raise _bad("'#' (fragment) in the target")
    if not _ALLOWED_RE.fullmatch(target):
        raise _bad("character not allowed in the target")
    if not target.startswith("/"):
        raise _bad("target is not origin-form")
    raw_path, question, raw_query = target.partition("?")
    query = raw_query if question else None
    if query is not None:
        _check_query(query)
    path = _PERCENT_RE.sub(_decode_escape, raw_path) if "%" in raw_path else raw_path
    path = _SLASHES_RE.sub("/", path)
    if "." in path:
        path = _remove_dot_segments(path)
    return NormalizedTarget(path, query)
