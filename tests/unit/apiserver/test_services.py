"""What a Service becomes on create and update (``apiserver/services.py``): upstream's defaults,
validation, IP families, allocation, immutability and what a type change drops."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ciliary.apiserver import errors
from ciliary.apiserver.servicealloc import (
    ServiceAllocator,
    ip_key,
    parse_port_range,
    parse_service_cidrs,
    port_key,
)
from ciliary.apiserver.services import admit

Obj = dict[str, Any]
DUAL = "10.96.0.0/24,fd00:10:96::/112"


def cluster(cidrs: str = "10.96.0.0/24") -> ServiceAllocator:
    a = ServiceAllocator(parse_service_cidrs(cidrs), parse_port_range("30000-30099"))
    a.rng = random.Random(1)
    a.load([])
    return a


def svc(**spec: Any) -> Obj:
    spec.setdefault("ports", [{"port": 80}])
    return {"metadata": {"name": "web", "namespace": "shop"}, "spec": spec}


def create(a: ServiceAllocator, obj: Obj) -> Obj:
    with a.session() as s:
        out = admit(a, s, None, obj)
    a.committed(a.claims(out), [])
    return out


def update(a: ServiceAllocator, old: Obj, new: Obj) -> Obj:
    with a.session() as s:
        out = admit(a, s, old, new)
    before, after = a.claims(old), a.claims(out)
    a.committed([k for k in after if k not in before], [k for k in before if k not in after])
    return out


def causes(a: ServiceAllocator, obj: Obj, old: Obj | None = None) -> dict[str, str]:
    with pytest.raises(errors.StatusError) as err, a.session() as s:
        admit(a, s, old, obj)
    assert err.value.code == 422, err.value
    return {c["field"]: c["message"] for c in err.value.details["causes"]}


def test_defaults_and_one_cluster_ip() -> None:
    a = cluster()
    spec = create(a, svc(selector={"app": "web"}))["spec"]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert (spec["ipFamilyPolicy"], spec["ipFamilies"]) == ("SingleStack", ["IPv4"])
    assert spec["clusterIPs"] == [spec["clusterIP"]] and spec["clusterIP"].startswith("10.96.0.")
    assert spec["internalTrafficPolicy"] == "Cluster" and "externalTrafficPolicy" not in spec
    assert a.used == {ip_key(spec["clusterIP"])}


def test_families_and_policies() -> None:
    single, dual = cluster(), cluster(DUAL)
    assert causes(single, svc(ipFamilyPolicy="RequireDualStack")) == {
        "spec.ipFamilyPolicy": 'Invalid value: "RequireDualStack": this cluster is not'
        " configured for dual-stack services"
    }
    prefer = create(single, svc(ipFamilyPolicy="PreferDualStack"))["spec"]
    assert prefer["ipFamilies"] == ["IPv4"] and len(prefer["clusterIPs"]) == 1
    both = create(dual, svc(ipFamilyPolicy="PreferDualStack"))["spec"]
    assert both["ipFamilies"] == ["IPv4", "IPv6"]
    assert both["clusterIPs"][1].startswith("fd00:10:96::")
    v6 = create(dual, svc(ipFamilies=["IPv6"]))["spec"]
    assert v6["clusterIP"].startswith("fd00:10:96::") and v6["ipFamilies"] == ["IPv6"]
    asked = create(dual, svc(ipFamilyPolicy="RequireDualStack", clusterIP="fd00:10:96::9"))
    assert asked["spec"]["clusterIPs"][0] == "fd00:10:96::9"
    assert asked["spec"]["ipFamilies"] == ["IPv6", "IPv4"]
    assert causes(single, svc(ipFamilies=["IPv6"])) == {
        "spec.ipFamilies[0]": 'Invalid value: "IPv6": not configured on this cluster'
    }
    assert "spec.ipFamilyPolicy" in causes(dual, svc(ipFamilies=["IPv4", "IPv6"]))
    assert causes(single, svc(ipFamilyPolicy="Both"))["spec.ipFamilyPolicy"].startswith(
        'Unsupported value: "Both"'
    )


def test_asked_for_addresses() -> None:
    a = cluster()
    first = create(a, svc(clusterIP="10.96.0.1"))["spec"]  # what the kubernetes Service asks
    assert first["clusterIPs"] == ["10.96.0.1"]
    assert causes(a, svc(clusterIPs=["10.96.0.1"])) == {
        "spec.clusterIPs": 'Invalid value: []string{"10.96.0.1"}: failed to allocate IP'
        " 10.96.0.1: provided IP is already allocated"
    }
    assert causes(a, svc(clusterIP="10.97.0.1")) == {
        "spec.clusterIPs": 'Invalid value: []string{"10.97.0.1"}: failed to allocate IP'
        " 10.97.0.1: the provided IP (10.97.0.1) is not in the valid range. The range of valid"
        " IPs is 10.96.0.0/24"
    }
    assert (
        "must be a valid IP address" in causes(a, svc(clusterIP="10.96.0.x"))["spec.clusterIPs[0]"]
    )
    assert (
        "first value must match"
        in causes(a, svc(clusterIP="10.96.0.2", clusterIPs=["10.96.0.3"]))["spec.clusterIPs"]
    )


def test_headless_and_external_name_get_no_address() -> None:
    a = cluster(DUAL)
    headless = create(a, svc(clusterIP="None", ports=[]))["spec"]
    assert headless["clusterIPs"] == ["None"]
    assert headless["ipFamilyPolicy"] == "RequireDualStack"  # headless without selector
    assert headless["ipFamilies"] == ["IPv4", "IPv6"]
    external = create(a, svc(type="ExternalName", externalName="db.example.com", ports=[]))
    assert "clusterIP" not in external["spec"] and "ipFamilies" not in external["spec"]
    assert a.used == set()
    assert causes(a, svc(type="ExternalName", externalName="x.io", clusterIP="10.96.0.9")) == {
        "spec.clusterIP": "Forbidden: may not be set for ExternalName services",
        "spec.clusterIPs": "Forbidden: may not be set for ExternalName services",
    }
    assert causes(a, svc(type="ExternalName")) == {"spec.externalName": "Required value"}
    assert (
        "may not be set to 'None'"
        in causes(a, svc(type="NodePort", clusterIP="None"))["spec.clusterIPs[0]"]
    )


def test_ports_are_validated_with_their_fields() -> None:
    a = cluster()
    got = causes(
        a,
        svc(
            ports=[
                {"port": 0, "name": "a"},
                {"port": 80, "protocol": "ICMP"},
                {"port": 81, "name": "a", "targetPort": "Not_A_Name"},
                {"port": 82, "name": "b", "nodePort": 30001},
            ]
        ),
    )
    assert got == {
        "spec.ports[0].port": "Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[0].targetPort": "Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[1].name": "Required value",
        "spec.ports[1].protocol": 'Unsupported value: "ICMP": supported values: "SCTP", "TCP",'
        ' "UDP"',
        "spec.ports[2].name": 'Duplicate value: "a"',
        "spec.ports[2].targetPort": got["spec.ports[2].targetPort"],
        "spec.ports[3].nodePort": "Forbidden: may not be used when `type` is 'ClusterIP'",
    }
    assert got["spec.ports[2].targetPort"].startswith('Invalid value: "Not_A_Name"')
    assert causes(a, svc(ports=[])) == {"spec.ports": "Required value"}
    dup = causes(a, svc(ports=[{"port": 53, "name": "a"}, {"port": 53, "name": "b"}]))
    assert dup == {"spec.ports[1]": "Duplicate value: 53/TCP"}
    assert a.used == set()


def test_node_ports() -> None:
    a = cluster()
    two = [{"port": 53, "name": "dns", "protocol": "UDP"}, {"port": 53, "name": "dns-tcp"}]
    np = create(a, svc(type="NodePort", ports=two))["spec"]
    ports = {p["nodePort"] for p in np["ports"]}
    assert len(ports) == 1 and 30000 <= ports.pop() <= 30099  # one node port for port 53
    assert np["externalTrafficPolicy"] == "Cluster"
    asked = create(a, svc(type="NodePort", ports=[{"port": 80, "nodePort": 30050}]))
    assert asked["spec"]["ports"][0]["nodePort"] == 30050
    assert causes(a, svc(type="NodePort", ports=[{"port": 80, "nodePort": 30050}])) == {
        "spec.ports[0].nodePort": "Invalid value: 30050: provided port is already allocated"
    }
    assert causes(a, svc(type="NodePort", ports=[{"port": 80, "nodePort": 8080}])) == {
        "spec.ports[0].nodePort": "Invalid value: 8080: provided port is not in the valid range."
        " The range of valid ports is 30000-30099"
    }
    lb = create(a, svc(type="LoadBalancer", externalTrafficPolicy="Local"))["spec"]
    assert lb["allocateLoadBalancerNodePorts"] is True and lb["ports"][0]["nodePort"]
    assert 30000 <= lb["healthCheckNodePort"] <= 30099
    assert lb["healthCheckNodePort"] != lb["ports"][0]["nodePort"]
    bare = create(a, svc(type="LoadBalancer", allocateLoadBalancerNodePorts=False))["spec"]
    assert "nodePort" not in bare["ports"][0] and "healthCheckNodePort" not in bare
    assert "spec.healthCheckNodePort" in causes(a, svc(type="NodePort", healthCheckNodePort=30001))
    assert "spec.allocateLoadBalancerNodePorts" in causes(
        a, svc(allocateLoadBalancerNodePorts=True)
    )


def test_full_ranges_are_500() -> None:
    a = cluster("10.96.0.0/30")  # .1 (the first, never chosen) and .2
    create(a, svc())
    with pytest.raises(errors.StatusError) as err, a.session() as s:
        admit(a, s, None, svc())
    assert (err.value.code, err.value.message) == (
        500,
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    )
    p = ServiceAllocator(parse_service_cidrs("10.96.0.0/24"), (30000, 30000))
    p.load([])
    create(p, svc(type="NodePort"))
    with pytest.raises(errors.StatusError) as err, p.session() as s:
        admit(p, s, None, svc(type="NodePort"))
    assert err.value.code == 500 and "failed to allocate a nodePort: range is full" in str(
        err.value
    )


def test_updates_keep_what_was_allocated_and_refuse_changes() -> None:
    a = cluster()
    old = create(a, svc(type="NodePort", ports=[{"port": 80, "name": "http"}]))
    ip, node_port = old["spec"]["clusterIP"], old["spec"]["ports"][0]["nodePort"]
    # a manifest without them (kubectl apply/replace) keeps both
    kept = update(a, old, svc(type="NodePort", ports=[{"port": 8080, "name": "http"}]))
    assert kept["spec"]["clusterIPs"] == [ip] and kept["spec"]["ports"][0]["nodePort"] == node_port
    assert causes(a, {**kept, "spec": {**kept["spec"], "clusterIP": "10.96.0.200"}}, kept) == {
        "spec.clusterIPs[0]": 'Invalid value: []string{"10.96.0.200"}: may not change once set'
    }
    # NodePort -> ClusterIP releases the node port, the address stays
    plain = update(a, kept, {**kept, "spec": {**kept["spec"], "type": "ClusterIP"}})
    assert "nodePort" not in plain["spec"]["ports"][0] and "externalTrafficPolicy" not in plain
    assert a.used == {ip_key(ip)}
    # ClusterIP -> ExternalName releases the address; back to ClusterIP allocates a new one
    external = update(
        a,
        plain,
        {**plain, "spec": {**plain["spec"], "type": "ExternalName", "externalName": "x.io"}},
    )
    assert "clusterIP" not in external["spec"] and a.used == set()
    back = update(a, external, svc(type="ClusterIP"))
    assert back["spec"]["clusterIP"] and a.used == {ip_key(back["spec"]["clusterIP"])}
    # LoadBalancer + Local gets a health check node port; Cluster releases it
    lb = update(a, back, svc(type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = lb["spec"]["healthCheckNodePort"]
    assert port_key(hc) in a.used
    cl = update(a, lb, {**lb, "spec": {**lb["spec"], "externalTrafficPolicy": "Cluster"}})
    assert "healthCheckNodePort" not in cl["spec"] and port_key(hc) not in a.used


def test_dual_stack_upgrade_and_downgrade() -> None:
    a = cluster(DUAL)
    one = create(a, svc())
    two = update(a, one, {**one, "spec": {**one["spec"], "ipFamilyPolicy": "RequireDualStack"}})
    assert len(two["spec"]["clusterIPs"]) == 2 and len(a.used) == 2
    assert "spec.ipFamilyPolicy" in causes(
        a, {**two, "spec": {**two["spec"], "clusterIPs": two["spec"]["clusterIPs"][:1]}}, two
    )
    down = update(a, two, {**two, "spec": {**two["spec"], "ipFamilyPolicy": "SingleStack"}})
    assert down["spec"]["clusterIPs"] == one["spec"]["clusterIPs"] and len(a.used) == 1
