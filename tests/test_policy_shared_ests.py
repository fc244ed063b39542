"""Equal parts of different policies' ESTs are one object after a load, and the shared
form is equal to what Cedar produced."""

from __future__ import annotations

import json
from typing import Any

from sidecar.policy.loader import _share, load_snapshot
from tests.test_policy_reload import POLICIES, T0


def test_equal_subtrees_become_one_object_and_values_are_unchanged() -> None:
    first = {"principal": {"op": "==", "entity": {"type": "Workload", "id": "a"}}, "n": [1, True]}
    second = json.loads(json.dumps(first))
    third = {"principal": {"op": "==", "entity": {"type": "Workload", "id": "b"}}, "n": [True, 1]}
    shared: dict[object, Any] = {}
    a, b, c = (_share(v, shared) for v in (first, second, third))
    assert (a, b, c) == (first, second, third)
    assert a is b
    assert a["principal"]["entity"]["type"] is c["principal"]["entity"]["type"]
    assert a["principal"] is not c["principal"]
    assert a["n"] is not c["n"]  # 1 and True are equal in Python, not in JSON


def test_loaded_policies_share_their_common_parts() -> None:
    snapshot = load_snapshot(POLICIES, T0)
    ests = [
        est
        for service in ("", *snapshot.slices.services)
        for est in snapshot.slices.policies_for(service).values()
    ]
    actions = {id(est["action"]) for est in ests}
    conditions = {json.dumps(est["action"], sort_keys=True) for est in ests}
    assert len(actions) == len(conditions)  # one object per distinct action scope
