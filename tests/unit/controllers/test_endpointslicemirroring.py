"""EndpointSlice mirroring (controllers/endpointslicemirroring.py): an Endpoints object of a
selector-less Service → its slices (per subset and family, ready and not-ready addresses, ports,
labels, owner), and when it is mirrored at all."""

from __future__ import annotations

from typing import Any

from ciliary.controllers.endpointslicemirroring import (
    CONTROLLER_NAME,
    MANAGED_BY,
    SKIP_MIRROR,
    mirrored,
    mirrored_slices,
)

ENDPOINTS: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Endpoints",
    "metadata": {
        "name": "db",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"team": "data", SKIP_MIRROR: "false"},
    },
    "subsets": [
        {
            "addresses": [
                {"ip": "192.0.2.10", "hostname": "db-0"},
                {"ip": "2001:db8::10", "nodeName": "n1"},
            ],
            "notReadyAddresses": [{"ip": "192.0.2.11"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        },
        {"addresses": [{"ip": "192.0.2.20"}], "ports": [{"port": 8080}]},
    ],
}


def test_each_subset_and_family_is_a_slice() -> None:
    slices = mirrored_slices(ENDPOINTS)
    by_group = {
        (s["addressType"], tuple(p["port"] for p in s["ports"])): s for s in slices.values()
    }
    assert set(by_group) == {("IPv4", (5432,)), ("IPv6", (5432,)), ("IPv4", (8080,))}
    v4 = by_group[("IPv4", (5432,))]
    assert v4["endpoints"] == [
        {
            "addresses": ["192.0.2.10"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "hostname": "db-0",
        },
        {
            "addresses": ["192.0.2.11"],
            "conditions": {"ready": False, "serving": False, "terminating": False},
        },
    ]
    assert by_group[("IPv6", (5432,))]["endpoints"][0]["nodeName"] == "n1"
    assert by_group[("IPv4", (8080,))]["ports"] == [{"name": "", "protocol": "TCP", "port": 8080}]
    for name, s in slices.items():
        meta = s["metadata"]
        assert name == meta["name"] and name.startswith("db-")
        assert meta["labels"] == {
            "team": "data",
            SKIP_MIRROR: "false",
            "kubernetes.io/service-name": "db",
            MANAGED_BY: CONTROLLER_NAME,
        }
        assert meta["ownerReferences"][0]["kind"] == "Endpoints"
        assert meta["ownerReferences"][0]["uid"] == "u-1"
    assert mirrored_slices(ENDPOINTS) == slices  # names are a function of the content's group
    assert mirrored_slices({**ENDPOINTS, "subsets": []}) == {}


def test_mirrored_only_for_a_selector_less_service() -> None:
    service: dict[str, Any] = {"metadata": {"name": "db", "namespace": "shop"}, "spec": {}}
    assert mirrored(ENDPOINTS, service)
    assert not mirrored(ENDPOINTS, None)
    assert not mirrored(ENDPOINTS, {**service, "spec": {"selector": {"app": "db"}}})
    skipped = {**ENDPOINTS, "metadata": {**ENDPOINTS["metadata"], "labels": {SKIP_MIRROR: "true"}}}
    assert not mirrored(skipped, service)
    assert not mirrored(None, service)
