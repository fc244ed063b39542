"""The CA server's batched access log: lines queue, then go out together in one write."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import trio

from mesh_ca.server.access_log import AccessLog


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def written(read_end: int) -> list[dict[str, object]]:
    try:
        data = os.read(read_end, 1 << 20)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.decode().splitlines()]


def test_lines_wait_until_max_lines_then_go_out_together(pipe: tuple[int, int]) -> None:
    log = AccessLog(pipe[1], enabled=True, max_lines=3)
    log.record({"path": "/a", "status": 200})
    log.record({"path": "/b", "status": 403})
    assert written(pipe[0]) == []
    log.record({"path": "/c", "status": 200})
    assert [line["path"] for line in written(pipe[0])] == ["/a", "/b", "/c"]


def test_flush_writes_what_waits_and_a_disabled_log_writes_nothing(
    pipe: tuple[int, int],
) -> None:
    log = AccessLog(pipe[1], enabled=True)
    log.record({"path": "/a", "status": 200})
    log.flush()
    assert written(pipe[0]) == [{"path": "/a", "status": 200}]
    off = AccessLog(pipe[1], enabled=False, max_lines=1)
    off.record({"path": "/b"})
    off.flush()
    assert written(pipe[0]) == []


def test_a_gone_sink_drops_lines_without_failing(pipe: tuple[int, int]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # writing now fails with EPIPE (Python ignores SIGPIPE)
    log = AccessLog(write_end, enabled=True)
    log.record({"path": "/a"})
    log.flush()
    os.close(write_end)


async def test_run_flushes_within_the_interval(pipe: tuple[int, int]) -> None:
    log = AccessLog(pipe[1], enabled=True, interval=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        log.record({"path": "/a"})
        with trio.fail_after(2):
            while not (lines := written(pipe[0])):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert lines == [{"path": "/a"}]


def test_the_logger_level_decides_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="mesh_ca.server.access")
    assert not AccessLog().enabled
    caplog.set_level("INFO", logger="mesh_ca.server.access")
    assert AccessLog().enabled
