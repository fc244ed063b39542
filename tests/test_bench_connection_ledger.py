"""The connection ledger's attribution of a sampled stack (leaf first): the innermost frame
that names a step decides, so a system call counts for the step that made it."""

from __future__ import annotations

from scripts.benchlib.connection_ledger import REST, step_of

SITE = "/venv/lib/python3.11/site-packages"
HANDLE = ("/work/sidecar/outbound/http.py", "handle")
GUARDED = ("/work/sidecar/acceptor.py", "guarded")


def test_the_close_system_call_counts_for_the_close() -> None:
    stack = [
        ("/usr/lib/python3.11/socket.py", "close"),
        ("/work/meshgate/transport/socket_stream.py", "close"),
        HANDLE,
        GUARDED,
    ]
    assert step_of(stack) == "close (aclose_forcefully / close)"


def test_socket_calls_inside_a_request_count_for_the_request() -> None:
    stack = [
        ("/work/meshgate/transport/socket_stream.py", "send_all"),
        ("/work/sidecar/outbound/http.py", "_request"),
        ("/work/sidecar/outbound/http.py", "_serve"),
        HANDLE,
        GUARDED,
    ]
    assert step_of(stack).startswith("the request itself")


def test_a_stream_built_by_the_accept_loop_counts_as_wrapping_not_accepting() -> None:
    stack = [
        ("/work/meshgate/transport/socket_stream.py", "__init__"),
        ("/work/sidecar/acceptor.py", "_accept_forever"),
        ("/work/sidecar/acceptor.py", "loop"),
    ]
    assert step_of(stack).startswith("wrap the socket")
    assert step_of(stack[1:]).startswith("accept")
    assert step_of([(f"{SITE}/trio/_core/_run.py", "spawn_impl"), *stack[1:]]).startswith("spawn")


def test_trio_alone_is_the_rest() -> None:
    assert step_of([(f"{SITE}/trio/_core/_run.py", "unrolled_run")]) == REST
