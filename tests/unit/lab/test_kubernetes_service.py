"""The lab's ``kubernetes`` Service (what kube-apiserver creates in ``default``) is one the API
server admits as it stands: the first address of the lab's service range, held by it alone."""

from __future__ import annotations

from ciliary.apiserver.servicealloc import ServiceAllocator, ip_key, parse_service_cidrs
from ciliary.apiserver.services import admit
from ciliary.lab.controlplane import SERVICE_CLUSTER_IP_RANGE, kubernetes_service


def test_kubernetes_service_takes_the_first_address() -> None:
    svc, eps = kubernetes_service("172.18.0.1")
    alloc = ServiceAllocator(parse_service_cidrs(SERVICE_CLUSTER_IP_RANGE))
    alloc.load([])
    with alloc.session() as s:
        stored = admit(alloc, s, None, svc)
    assert stored["spec"]["clusterIPs"] == ["10.96.0.1"]
    assert stored["spec"]["ports"] == [
        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}
    ]
    assert set(alloc.claims(stored)) == {ip_key("10.96.0.1")}
    assert eps["addressType"] == "IPv4" and eps["endpoints"][0]["addresses"] == ["172.18.0.1"]
    assert eps["metadata"]["labels"] == {"kubernetes.io/service-name": "kubernetes"}
    assert kubernetes_service("fc00::1")[1]["addressType"] == "IPv6"
