"""hostPort handled natively (agent/k8s/hostports.py): a running pod of this node with
``ports[].hostPort`` becomes a HostPort service whose frontends are this node's addresses (or
its ``hostIP``) at the host port and whose backends are the pod's IPs at the container port;
nothing for pods elsewhere, not running or deleted; changes name the services to reprogram."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from ciliary.agent.k8s.hostports import HostPorts, host_port_services
from ciliary.agent.services import FrontendNode, desired_frontends
from ciliary.datapath.maps.lb import (
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_HOSTPORT,
    Backend,
    Frontend,
)

NODE = FrontendNode("n1", ("192.168.1.2", "fd00:1::2"))


def pod(
    *ports: dict[str, Any], node: str = "n1", phase: str = "Running", **meta: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", **meta},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]},
        "status": {"phase": phase, "podIPs": [{"ip": "10.0.1.5"}, {"ip": "fd00::5"}]},
    }


HTTP = {"containerPort": 8080, "hostPort": 18080}


def test_a_host_port_is_served_on_every_node_address_by_the_pod() -> None:
    (svc,) = host_port_services(pod(HTTP, {"containerPort": 9000}), "n1")
    assert (svc.namespace, svc.name, svc.type) == ("shop", "web/host-port/18080", "HostPort")
    fes = desired_frontends([svc], NODE)
    assert set(fes) == {
        Frontend(ip_address("192.168.1.2"), 18080, 6),
        Frontend(ip_address("fd00:1::2"), 18080, 6),
    }
    v4 = fes[Frontend(ip_address("192.168.1.2"), 18080, 6)]
    assert v4.flags == SVC_FLAG_HOSTPORT | SVC_FLAG_EXT_LOCAL_SCOPE and v4.type == "HostPort"
    assert v4.backends == (Backend(ip_address("10.0.1.5"), 8080, 6, 0),)
    assert desired_frontends([svc], None) == {}  # no node: nothing of it


def test_a_host_ip_pins_the_frontend_and_the_family() -> None:
    udp = {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.168.1.2"}
    (svc,) = host_port_services(pod(udp), "n1")
    (frontend,) = desired_frontends([svc], NODE).items()
    assert frontend[0] == Frontend(ip_address("192.168.1.2"), 5353, 17)
    assert frontend[1].backends == (Backend(ip_address("10.0.1.5"), 53, 17, 0),)
    wildcard = {**udp, "hostIP": "0.0.0.0"}
    (svc,) = host_port_services(pod(wildcard), "n1")
    assert len(desired_frontends([svc], NODE)) == 2


def test_only_running_pods_of_this_node() -> None:
    assert host_port_services(pod(HTTP, node="n2"), "n1") == []
    assert host_port_services(pod(HTTP, phase="Pending"), "n1") == []
    deleting = pod(HTTP, deletionTimestamp="2026-01-01T00:00:00Z")
    assert host_port_services(deleting, "n1") == []


def test_changes_name_the_services_to_reprogram() -> None:
    hp = HostPorts("n1")
    key = ("shop", "web/host-port/18080")
    assert hp.update(pod(HTTP)) == {key}
    assert hp.get(*key) is not None and hp.get("shop", "web") is None
    assert hp.update(pod(HTTP)) == set()  # unchanged
    moved = {"containerPort": 8080, "hostPort": 18081}
    assert hp.update(pod(moved)) == {key, ("shop", "web/host-port/18081")}
    assert hp.update(pod(moved), deleted=True) == {("shop", "web/host-port/18081")}
    assert hp.services() == [] and hp.get(*key) is None
