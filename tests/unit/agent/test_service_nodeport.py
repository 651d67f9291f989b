"""The external frontends the service manager programs (agent/services.py): NodePort on this
node's addresses, externalIPs, LoadBalancer ingress IPs, their SVC_FLAG_* and the Local traffic
policies' backends; the Kubernetes fields they come from (k8s/core.py, the service cache)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from pydantic import ValidationError

from ciliary.agent.k8s.services import _service_info
from ciliary.agent.services import FrontendNode, desired_frontends
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.maps.lb import (
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_INT_LOCAL_SCOPE,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_NODEPORT,
    Backend,
    Frontend,
)
from ciliary.k8s.core import Service

NODE = FrontendNode("n1", ("192.168.1.2", "fd00:1::2"))


def _backend(addr: str, node: str) -> BackendInfo:
    return BackendInfo(
        address=addr,
        node_name=node,
        ready=True,
        serving=True,
        terminating=False,
        ports={"http": L4Addr(protocol="TCP", port=8080)},
    )


def _svc(svc_type: str = "NodePort", etp: str = "Cluster", **kw: object) -> ServiceInfo:
    return ServiceInfo(
        namespace="shop",
        name="web",
        type=svc_type,
        cluster_ips=kw.pop("cluster_ips", ["10.96.0.5"]),
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP", node_port=30080)],
        session_affinity="None",
        external_traffic_policy=etp,
        backends=[
            _backend("10.0.1.5", "n1"),
            _backend("10.0.2.7", "n2"),
            _backend("fd00::5", "n2"),
        ],
        **kw,
    )


def fe(addr: str, port: int) -> Frontend:
    return Frontend(ip_address(addr), port, 6)


def _addrs(spec_backends: tuple[Backend, ...]) -> list[str]:
    return [str(b.address) for b in spec_backends]


def test_nodeport_on_each_node_address_with_every_backend_of_its_family() -> None:
    got = desired_frontends([_svc(cluster_ips=["10.96.0.5", "fd00:10:96::5"])], NODE)
    v4, v6 = got[fe("192.168.1.2", 30080)], got[fe("fd00:1::2", 30080)]
    assert v4.flags == SVC_FLAG_NODEPORT and v4.type == "NodePort"
    assert _addrs(v4.backends) == ["10.0.1.5", "10.0.2.7"]
    assert _addrs(v6.backends) == ["fd00::5"]
    assert got[fe("10.96.0.5", 80)].flags == 0  # the ClusterIP stays the cluster's
    # a single-stack Service: its family's node addresses only (upstream's)
    assert fe("fd00:1::2", 30080) not in desired_frontends([_svc()], NODE)
    # without this node's addresses (or for a ClusterIP Service): no NodePort frontend
    assert fe("192.168.1.2", 30080) not in desired_frontends([_svc()])
    assert fe("192.168.1.2", 30080) not in desired_frontends([_svc("ClusterIP")], NODE)


def test_external_traffic_policy_local_keeps_this_nodes_backends_only() -> None:
    got = desired_frontends([_svc(etp="Local", cluster_ips=["10.96.0.5", "fd00:10:96::5"])], NODE)
    v4 = got[fe("192.168.1.2", 30080)]
    assert v4.flags == SVC_FLAG_NODEPORT | SVC_FLAG_EXT_LOCAL_SCOPE
    assert _addrs(v4.backends) == ["10.0.1.5"]
    assert got[fe("fd00:1::2", 30080)].backends == ()  # none here: the datapath drops
    assert len(got[fe("10.96.0.5", 80)].backends) == 2  # in-cluster: every backend
    other = desired_frontends([_svc(etp="Local")], FrontendNode("n2", ("192.168.1.3",)))
    assert _addrs(other[fe("192.168.1.3", 30080)].backends) == ["10.0.2.7"]


def test_internal_traffic_policy_local_for_the_cluster_ip() -> None:
    got = desired_frontends([_svc("ClusterIP", internal_traffic_policy="Local")], NODE)
    cip = got[fe("10.96.0.5", 80)]
    assert cip.flags2 == SVC_FLAG_INT_LOCAL_SCOPE and _addrs(cip.backends) == ["10.0.1.5"]


def test_external_ips_and_load_balancer_ingress_on_the_service_port() -> None:
    svc = _svc("LoadBalancer", external_ips=["203.0.113.7"], load_balancer_ips=["198.51.100.9"])
    got = desired_frontends([svc], NODE)
    assert got[fe("203.0.113.7", 80)].flags == SVC_FLAG_EXTERNAL_IP
    assert got[fe("203.0.113.7", 80)].type == "ExternalIPs"
    assert got[fe("198.51.100.9", 80)].flags == SVC_FLAG_LOADBALANCER
    assert got[fe("192.168.1.2", 30080)].flags == SVC_FLAG_NODEPORT  # a LoadBalancer's nodePort
    # ingress IPs count for a LoadBalancer only
    plain = _svc("ClusterIP", load_balancer_ips=["198.51.100.9"])
    assert fe("198.51.100.9", 80) not in desired_frontends([plain], NODE)


def test_the_cache_reads_external_ips_and_the_load_balancer_status() -> None:
    svc = Service.model_validate(
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.5",
                "externalIPs": ["203.0.113.7"],
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "ports": [{"port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "x"}]}},
        }
    )
    info = _service_info(svc)
    assert info.external_ips == ["203.0.113.7"]
    assert info.load_balancer_ips == ["198.51.100.9"]
    assert (info.external_traffic_policy, info.internal_traffic_policy) == ("Local", "Local")


def test_an_external_ip_that_is_no_address_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"spec.externalIPs: 'web.example' is not an IP"):
        Service.model_validate(
            {"metadata": {"name": "w"}, "spec": {"externalIPs": ["web.example"]}}
        )
