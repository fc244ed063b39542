"""The public face of meshgate.http is explicit and complete."""

from __future__ import annotations

import meshgate.http


def test_every_export_exists_and_nothing_private_leaks() -> None:
    for name in meshgate.http.__all__:
        assert hasattr(meshgate.http, name), name
        assert not name.startswith("_")
    assert sorted(meshgate.http.__all__) == sorted(set(meshgate.http.__all__))
    assert {"HttpError", "RequestReader", "ResponseReader", "normalize_target"} <= set(
        meshgate.http.__all__
    )
