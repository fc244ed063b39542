"""The CA benchmark's load generator (scripts/benchlib/ca_load.py) against a real CA server
process: bootstrap and renewal issue with no failures, in one process and in two forked ones
(whose bodies never overlap: a reused join token would fail), a 404 counts as failed; and
its response reader frames responses split anywhere and refuses what it cannot frame."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshgate.transport.mtls import client_context
from scripts.benchlib.ca_load import ResponseError, ResponseReader, Target, run_load
from scripts.benchlib.ca_requests import (
    add_tokens,
    bootstrap_bodies,
    csr_pems,
    renew_bodies,
    renew_contexts,
)
from tests.ca_server_process import CaServer, running_ca_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    directory = tmp_path_factory.mktemp("ca-load")
    with running_ca_server(directory, rate_limit_per_second=1e6, rate_limit_burst=10**6) as ca:
        yield ca


def _bootstrap_bodies(server: CaServer, count: int) -> Iterator[bytes]:
    return bootstrap_bodies(add_tokens(server.ca, count, "load"))


def _anonymous(server: CaServer, count: int) -> list[Target]:
    return [Target((server.host, server.port), client_context(server.bundles))] * count


def test_bootstrap_and_renewal_issue_with_no_failures(server: CaServer) -> None:
    bootstrap = run_load(
        _anonymous(server, 4), "/v1/bootstrap", _bootstrap_bodies(server, 300), 0.5
    )
    assert bootstrap.ok > 0
    assert bootstrap.failed == 0
    assert bootstrap.client_cpu_seconds > 0

    targets = [Target((server.host, server.port), c) for c in renew_contexts(server.ca, 2)]
    renew = run_load(targets, "/v1/renew", renew_bodies(csr_pems(1)), 0.5)
    assert renew.ok > 0
    assert renew.failed == 0


def test_forked_workers_never_reuse_a_join_token_across_phases(server: CaServer) -> None:
    # Each phase runs 1 s; 5,000 tokens outlast the first at this CA's ~1,000 SVIDs/s, so the
    # second finds tokens left (400 did not on a quiet machine), and 1 s is long enough for
    # forked workers to issue something on a loaded one (0.2 s was not).
    bodies = _bootstrap_bodies(server, 5000)
    first = run_load(_anonymous(server, 4), "/v1/bootstrap", bodies, 1.0, processes=2)
    second = run_load(_anonymous(server, 4), "/v1/bootstrap", bodies, 1.0, processes=2)
    assert first.ok > 0
    assert second.ok > 0
    assert (first.failed, second.failed) == (0, 0)


def test_a_404_counts_as_failed(server: CaServer) -> None:
    result = run_load(_anonymous(server, 1), "/v1/nowhere", iter([b"{}"]), 0.5)
    assert (result.ok, result.failed) == (0, 1)


def test_the_reader_frames_a_response_split_into_single_bytes() -> None:
    response = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"
    reader = ResponseReader()
    statuses = [reader.feed(response[i : i + 1]) for i in range(len(response))]
    assert statuses == [None] * (len(response) - 1) + [201]
    assert reader.idle
    assert not reader.close
    assert reader.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n") == 200
    assert reader.close


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", "without Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nextra", "after the response"),
        (b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "without a colon"),
    ],
)
def test_the_reader_refuses_what_it_cannot_frame(response: bytes, reason: str) -> None:
    with pytest.raises(ResponseError, match=reason):
        ResponseReader().feed(response)


def test_the_load_refuses_zero_processes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_load([], "/", iter([]), 0.1, processes=0)
