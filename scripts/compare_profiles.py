"""Compare cProfile dumps of CA servers run side by side, per request.

``bench.py ca --server-profile FILE --baseline REF [--baseline2 REF2]`` writes ``FILE``
(this tree) and ``FILE.baseline`` / ``FILE.baseline2``. Each dump covers a whole server run,
so its figures are divided by the requests the server answered, counted as the calls of
``SSLObject.write`` (one per response in every tree: handshakes write no application data).
cProfile inflates every Python call, so the µs are for comparing trees, not absolute; the
call counts are exact.

    python scripts/compare_profiles.py now=/tmp/prof base=/tmp/prof.baseline [--top 30]
"""

from __future__ import annotations

import argparse
import pstats
import sys
from typing import Final

_RESPONSE_WRITE: Final = "<method 'write' of '_ssl._SSLSocket' objects>"
# (group, fragments of "file:function"), first match wins.
_GROUPS: Final = (
    ("HTTP reader and wire", ("meshgate/http/", "server/wire.py")),
    (
        "TLS stream and socket calls",
        (
            "tlsconn.py",
            "meshgate/transport/",
            "_socket.socket",
            "_ssl.",
            "posix.read",
            "posix.write",
        ),
    ),
    ("CA server (request loop, stages, endpoints)", ("mesh_ca/server/",)),
    ("mesh_ca other (issuance, store, ...)", ("mesh_ca/",)),
    ("trio", ("trio/", "outcome/")),
    ("sqlite", ("sqlite3",)),
    ("cryptography", ("_rust", "cryptography", "primitives/")),
)

Row = dict[str, tuple[float, float]]  # label -> (calls, µs) per request


def _label(key: tuple[str, int, str]) -> str:
    path, _, function = key
    return "/".join(path.split("/")[-3:]) + ":" + function


def per_request(path: str) -> tuple[int, Row]:
    """(requests, {label: (calls, µs)} per request) of one dump."""
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    requests = sum(v[1] for key, v in stats.items() if key[2] == _RESPONSE_WRITE)
    if not requests:
        raise SystemExit(f"{path}: no responses written (not a CA server profile?)")
    rows: dict[str, list[float]] = {}
    for key, (_, calls, tottime, _, _) in stats.items():
        row = rows.setdefault(_label(key), [0.0, 0.0])
        row[0] += calls
        row[1] += tottime
    return requests, {k: (c / requests, t / requests * 1e6) for k, (c, t) in rows.items()}


def group_of(label: str) -> str:
    for name, fragments in _GROUPS:
        if any(f in label for f in fragments):
            return name
    return "other (builtins, json, logging, prometheus, pydantic, stdlib)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dumps", nargs="+", help="NAME=PATH, the first is compared to the others")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = parser.parse_args(argv)
    named: dict[str, Row] = {}
    for item in args.dumps:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"dumps: {item!r} is not NAME=PATH")
        requests, rows = per_request(path)
        named[name] = rows
        calls = sum(c for c, _ in rows.values())
        micros = sum(t for _, t in rows.values())
        print(f"{name}: {requests} requests, {calls:.1f} calls and {micros:.1f} µs a request")
    names = list(named)
    print("\nµs a request by group (" + " / ".join(names) + ")")
    groups: dict[str, list[float]] = {}
    for i, name in enumerate(names):
        for label, (_, micros) in named[name].items():
            groups.setdefault(group_of(label), [0.0] * len(names))[i] += micros
    for group, values in sorted(groups.items(), key=lambda g: g[1][-1] - g[1][0]):
        print("  " + " / ".join(f"{v:7.1f}" for v in values) + f"   {group}")
    first, *others = names
    labels = set().union(*(named[n] for n in names))
    for other in others:
        print(f"\nlargest differences, {first} minus {other} (µs, calls a request)")
        diff = sorted(
            labels,
            key=lambda lab: (
                -abs(named[first].get(lab, (0, 0))[1] - named[other].get(lab, (0, 0))[1])
            ),
        )
        for label in diff[: args.top]:
            a = named[first].get(label, (0.0, 0.0))
            b = named[other].get(label, (0.0, 0.0))
            print(f"  {a[1] - b[1]:+7.1f} µs  {a[0]:6.2f} / {b[0]:6.2f} calls  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
