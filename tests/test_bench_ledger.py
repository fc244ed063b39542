"""The CPU ledger's attribution of a sampled stack (leaf first) to a step of the request:
the innermost frame that belongs to a step decides, so library code counts for the step
that called it."""

from __future__ import annotations

from scripts.benchlib.ledger import OTHER, step_of

SITE = "/venv/lib/python3.11/site-packages"


def test_ssl_called_by_the_tls_stream_is_tls() -> None:
    stack = [
        ("/usr/lib/python3.11/ssl.py", "read"),
        ("/work/meshgate/transport/tls_stream.py", "receive_some"),
        ("/work/sidecar/inbound/http.py", "serve"),
    ]
    assert step_of(stack) == "TLS read and write (ssl record layer)"


def test_a_socket_call_made_for_the_tls_stream_is_a_socket_call() -> None:
    stack = [
        ("/work/meshgate/transport/socket_stream.py", "send_all"),
        ("/work/meshgate/transport/tls_stream.py", "send_all"),
    ]
    assert step_of(stack) == "socket calls and trio waits"


def test_the_logging_library_counts_for_the_access_log() -> None:
    stack = [
        ("/usr/lib/python3.11/json/encoder.py", "encode"),
        ("/usr/lib/python3.11/logging/__init__.py", "emit"),
        ("/work/sidecar/observe/access.py", "request_done"),
    ]
    assert step_of(stack) == "the access log and the observer (observe.py, logging)"
    assert step_of([(f"{SITE}/prometheus_client/metrics.py", "inc"), *stack[1:]]).startswith(
        "metrics"
    )


def test_cedar_counts_for_the_decision_and_unknown_code_for_other() -> None:
    assert step_of([(f"{SITE}/cedarpy/__init__.py", "is_authorized")]).startswith("the decision")
    assert step_of([("/usr/lib/python3.11/abc.py", "__instancecheck__")]) == OTHER


def test_trio_counts_only_for_what_no_step_of_the_sidecar_called() -> None:
    trio = f"{SITE}/trio/_core/_run.py"
    assert step_of([(trio, "unrolled_run")]) == "trio's scheduler and run loop"
    assert (
        step_of([("/work/sidecar/transport/mesh_tls.py", "peer_id"), (trio, "unrolled_run")])
        == OTHER
    )
