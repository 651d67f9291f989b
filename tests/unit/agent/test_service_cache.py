"""The agent's service and node caches (``agent.k8s.services``): what a Service and its
EndpointSlices become, merged across slices, not-ready endpoints left out, deletions, and the
upstream names of the synced Kubernetes APIs."""

from __future__ import annotations

from typing import Any

from ciliary.agent.k8s.services import (
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    NodeCache,
    ServiceCache,
    api_name,
)
from ciliary.core.models import L4Addr
from ciliary.k8s.resources import by_path


def _service(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "t", "name": name},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
            "sessionAffinity": "ClientIP",
            "externalTrafficPolicy": "Local",
            **spec,
        },
    }


def _slice(
    name: str, service: str | None, endpoints: list[dict[str, Any]], family: str = "IPv4"
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"namespace": "t", "name": name, "labels": labels},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def _ep(address: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions, "nodeName": "n1"}


def test_service_fields() -> None:
    cache = ServiceCache()
    cache.upsert_service(_service())
    svc = cache.get("t", "web")
    assert svc is not None
    assert (svc.type, svc.cluster_ips) == ("NodePort", ["10.96.0.10", "fd00:96::10"])
    assert [(p.name, p.port, p.protocol, p.node_port) for p in svc.ports] == [
        ("http", 80, "TCP", 30080),
        ("dns", 53, "UDP", None),
    ]
    assert (svc.session_affinity, svc.external_traffic_policy) == ("ClientIP", "Local")
    cache.upsert_service(_service("headless", clusterIP="None", clusterIPs=["None"]))
    cache.upsert_service(_service("plain", externalTrafficPolicy=None, sessionAffinity="None"))
    headless, plain = cache.get("t", "headless"), cache.get("t", "plain")
    assert headless is not None and headless.cluster_ips == []
    assert plain is not None and plain.external_traffic_policy == "Cluster"


def test_slices_merge_and_not_ready_endpoints_are_no_backends() -> None:
    cache = ServiceCache()
    # the slices arrive before their Service (informers of two kinds are not ordered)
    cache.upsert_slice(
        _slice("web-a", "web", [_ep("10.0.0.1", ready=True), _ep("10.0.0.2", ready=False)])
    )
    cache.upsert_slice(_slice("web-b", "web", [{"addresses": ["10.0.0.3"]}]))  # nil ready: ready
    cache.upsert_slice(
        _slice("web-c", "web", [_ep("10.0.0.4", ready=False, serving=True, terminating=True)])
    )
    cache.upsert_slice(_slice("other-a", "other", [_ep("10.0.0.9", ready=True)]))
    cache.upsert_slice(_slice("unowned", None, [_ep("10.0.0.8", ready=True)]))
    cache.upsert_slice(_slice("web-f", "web", [{"addresses": ["web.example"]}], family="FQDN"))
    assert cache.get("t", "web") is None  # no Service yet
    cache.upsert_service(_service())
    svc = cache.get("t", "web")
    assert svc is not None
    got = {b.address: (b.ready, b.serving, b.terminating) for b in svc.backends}
    assert got == {
        "10.0.0.1": (True, True, False),
        "10.0.0.3": (True, True, False),
        "10.0.0.4": (False, True, True),  # kept for graceful termination, flagged
    }
    assert svc.backends[0].ports == {"http": L4Addr(protocol="TCP", port=8080)}
    assert svc.backends[0].node_name == "n1"
    # an update replaces the slice's backends: .2 becomes ready, .1 leaves
    cache.upsert_slice(_slice("web-a", "web", [_ep("10.0.0.2", ready=True)]))
    svc = cache.get("t", "web")
    assert svc is not None
    assert [b.address for b in svc.backends] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_an_address_in_two_slices_is_one_backend_with_both_ports() -> None:
    cache = ServiceCache()
    cache.upsert_service(_service())
    cache.upsert_slice(_slice("web-a", "web", [_ep("10.0.0.1", ready=False)]))
    b = _slice("web-b", "web", [_ep("10.0.0.1", ready=True)])
    b["ports"] = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    cache.upsert_slice(b)
    svc = cache.get("t", "web")
    assert svc is not None
    (backend,) = svc.backends
    assert backend.ready and set(backend.ports) == {"dns"}  # the unready listing adds nothing
    a = _slice("web-a", "web", [_ep("10.0.0.1", ready=True)])
    cache.upsert_slice(a)
    svc = cache.get("t", "web")
    assert svc is not None
    (backend,) = svc.backends
    assert backend.ports == {
        "http": L4Addr(protocol="TCP", port=8080),
        "dns": L4Addr(protocol="UDP", port=5353),
    }


def test_deletions_and_relabelled_slices() -> None:
    cache = ServiceCache()
    cache.upsert_service(_service())
    cache.upsert_service(_service("other"))
    cache.upsert_slice(_slice("s1", "web", [_ep("10.0.0.1", ready=True)]))
    cache.upsert_slice(_slice("s2", "web", [_ep("10.0.0.2", ready=True)]))
    cache.delete_slice(_slice("s1", "web", []))  # the deletion event's final state
    svc = cache.get("t", "web")
    assert svc is not None and [b.address for b in svc.backends] == ["10.0.0.2"]
    cache.upsert_slice(_slice("s2", "other", [_ep("10.0.0.2", ready=True)]))  # relabelled
    web, other = cache.get("t", "web"), cache.get("t", "other")
    assert web is not None and web.backends == []
    assert other is not None and [b.address for b in other.backends] == ["10.0.0.2"]
    cache.delete_service(_service("other"))
    assert cache.get("t", "other") is None
    assert [s.name for s in cache.services()] == ["web"]


def test_a_malformed_object_is_dropped_not_half_kept() -> None:
    cache = ServiceCache()
    cache.upsert_service(_service())
    cache.upsert_slice(_slice("s1", "web", [_ep("10.0.0.1", ready=True)]))
    cache.upsert_service(_service(ports=[{"port": 70000}]))  # out of range
    assert cache.get("t", "web") is None
    cache.upsert_service(_service())
    cache.upsert_slice(_slice("s1", "web", [{"addresses": []}]))  # an endpoint needs an address
    svc = cache.get("t", "web")
    assert svc is not None and svc.backends == []


def test_node_cache() -> None:
    nodes = NodeCache()
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n2", "labels": {"zone": "a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.2"}]},
    }
    nodes.upsert(node)
    (got,) = nodes.nodes()
    assert (got.name, got.labels) == ("n2", {"zone": "a"})
    assert [(a.type, a.address) for a in got.addresses] == [("InternalIP", "192.168.1.2")]
    nodes.delete(node)
    assert nodes.nodes() == [] and nodes.get("n2") is None


def test_upstream_api_names() -> None:
    assert api_name(SERVICES) == "core/v1::Service"
    assert api_name(NODES) == "core/v1::Node"
    assert api_name(ENDPOINT_SLICES) == "discovery/v1::EndpointSlice"
    assert api_name(by_path("", "v1", "pods")) == "core/v1::Pods"
    assert api_name(by_path("cilium.io", "v2", "ciliumnodes")) == "cilium/v2::CiliumNode"
    netpol = by_path("networking.k8s.io", "v1", "networkpolicies")
    assert api_name(netpol) == "networking.k8s.io/v1::NetworkPolicy"
