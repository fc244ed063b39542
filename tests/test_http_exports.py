"""The public face of sidecar.http is explicit and complete."""

from __future__ import annotations

import sidecar.http


def test_every_export_exists_and_nothing_private_leaks() -> None:
    for name in sidecar.http.__all__:
        assert hasattr(sidecar.http, name), name
        assert not name.startswith("_")
    assert sorted(sidecar.http.__all__) == sorted(set(sidecar.http.__all__))
    assert {"HttpError", "RequestReader", "ResponseReader", "normalize_target"} <= set(
        sidecar.http.__all__
    )
