"""Micro-benchmark: CPU per relayed response of both sidecars' relay code, this tree vs a ref.

Usage: .venv/bin/python scripts/bench_response_relay.py [--baseline cfc2132] [--rounds 6]
                                                        [--responses 30000]

Each measurement is a child process that imports one tree (this one, or git REF extracted
with `git archive`) and relays one small keep-alive response (200, Content-Length 13) again
and again through that tree's relay code: the inbound `Forwarder`'s and the outbound
`HttpOutbound._respond`, over in-memory fakes that answer at once (no sockets, no waits),
so only the relay's own Python work is timed. Rounds alternate the two trees; the figure
is the median CPU µs per response (process time) over the rounds. It isolates what
`bench.py http` cannot resolve on a loaded machine (a difference of ~1 µs in ~250 µs a hop).
The inbound's relay is `_relay` since issue 13 item 3 and `_relay_response` before it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: text/plain\r\n"
    b"date: Thu, 03 Dec 2026 12:00:00 GMT\r\n\r\nhello, world\n"
)


class _Fake:
    """Upstream and client at once: every receive returns the whole response, every send
    is taken; the deadline attributes the relays set are plain attributes."""

    receive_deadline = math.inf
    send_deadline = math.inf

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return RESPONSE

    async def send_all(self, data: bytes) -> None:
        pass

    def extend_receive_deadline(self, deadline: float) -> None:
        self.receive_deadline = deadline


def _child(direction: str, responses: int) -> float:
    """CPU µs per response of the tree first on sys.path (run in a fresh process)."""
    import trio

    from meshgate.http import RequestReader, ResponseReader
    from sidecar.config import TimeoutsConfig

    request = RequestReader()
    request.feed(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    head = request.next_event()
    timeouts = TimeoutsConfig()
    fake = _Fake()
    figure = 0.0

    async def inbound() -> Any:
        from sidecar.inbound.client import ClientSide
        from sidecar.inbound.forward import Forwarder
        from sidecar.inbound.outcome import Response, Upload

        forwarder: Any = Forwarder.__new__(Forwarder)
        forwarder.client = ClientSide(
            fake,  # type: ignore[arg-type]
            fake,  # type: ignore[arg-type]
            RequestReader(),
            timeouts,
            idle_waits=set(),
            draining=lambda: False,
        )
        forwarder.timeouts = timeouts
        forwarder.retiring = lambda: False
        shared = hasattr(forwarder, "_relay")

        async def once() -> None:
            app = SimpleNamespace(reader=ResponseReader(), stream=fake)
            app.reader.expect("GET")
            upload, response = Upload(done=True), Response()
            if shared:
                relayed = await forwarder._relay(app, head, upload, response)
                assert relayed.complete
            else:  # before: the caller set the response deadline
                app.stream.receive_deadline = trio.current_time() + 30.0
                await forwarder._relay_response(app, head, upload, response)
                assert response.complete  # type: ignore[attr-defined]

        return once

    async def outbound() -> Any:
        from sidecar.outbound.http import HttpOutbound, _Exchange

        proxy: Any = HttpOutbound.__new__(HttpOutbound)
        proxy.runtime = SimpleNamespace(timeouts=timeouts)

        async def once() -> None:
            conn = SimpleNamespace(reader=ResponseReader(), stream=fake, transport=fake)
            conn.endpoint = "upstream"
            conn.reader.expect("GET")
            keep_client, reusable = await proxy._respond(fake, head, conn, _Exchange())
            assert keep_client
            assert reusable

        return once

    async def main() -> None:
        nonlocal figure
        once = await (inbound() if direction == "inbound" else outbound())
        for _ in range(2000):  # warm up
            await once()
        start = time.process_time()
        for _ in range(responses):
            await once()
        figure = (time.process_time() - start) / responses * 1e6

    trio.run(main)
    return figure


def _measure(tree: Path, direction: str, responses: int) -> float:
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r})\n"
        "from scripts.bench_response_relay import _child\n"
        f"print(_child({direction!r}, {responses}))"
    )
    # The tree under test comes first on sys.path; this script is imported from ROOT only
    # after it, so the baseline tree does not need to hold it.
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", default="cfc2132", help="git ref to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--responses", type=int, default=30000, help="per measurement")
    args = parser.parse_args(argv)
    figures: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="meshgate-relay-baseline-") as name:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", args.baseline],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", name], input=archive, check=True)
        trees = {"now": ROOT, args.baseline: Path(name)}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                for direction in ("inbound", "outbound"):
                    figure = _measure(tree, direction, args.responses)
                    figures.setdefault((label, direction), []).append(figure)
    for direction in ("inbound", "outbound"):
        now = statistics.median(figures[("now", direction)])
        base = statistics.median(figures[(args.baseline, direction)])
        print(
            f"{direction}: now {now:.2f} µs, {args.baseline} {base:.2f} µs per response "
            f"(median of {args.rounds}; ratio {now / base:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
