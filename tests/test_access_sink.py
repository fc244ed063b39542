"""The batched JSON access sink (sidecar/observe/access_sink.py): a line is out as soon as
the trio run goes idle, a full batch at once, and outside trio every line at once."""

from __future__ import annotations

import io
import json

import trio

from sidecar.observe.access_sink import BatchedAccessSink


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_outside_trio_every_line_is_written_at_once() -> None:
    out = io.StringIO()
    sink = BatchedAccessSink(out)
    sink.line({"path": "/a", "status": 200})
    assert _lines(out) == [{"path": "/a", "status": 200}]


async def test_lines_wait_while_tasks_run_and_go_out_together_when_the_run_idles() -> None:
    out = io.StringIO()
    sink = BatchedAccessSink(out)
    sink.line({"n": 1})
    sink.line({"n": 2})
    assert out.getvalue() == ""  # still running: nothing written yet
    await trio.sleep(0.01)  # the run waits for I/O: the batch goes out first
    assert _lines(out) == [{"n": 1}, {"n": 2}]


async def test_a_full_batch_is_written_at_once() -> None:
    out = io.StringIO()
    sink = BatchedAccessSink(out, max_lines=3)
    for n in range(3):
        sink.line({"n": n})
    assert [line["n"] for line in _lines(out)] == [0, 1, 2]


async def test_a_sink_that_is_gone_drops_lines_and_does_not_raise() -> None:
    out = io.StringIO()
    sink = BatchedAccessSink(out)
    out.close()
    sink.line({"n": 1})
    await trio.sleep(0.01)
