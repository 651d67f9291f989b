"""The lab's cluster DNS: ``kube-system/coredns`` comes up with the lab behind the ``kube-dns``
Service, serves every pod's name (and Kubernetes' dashed-IP form) over UDP and TCP through the
datapath, learns pods added later, and Services made and deleted with kubectl (A, AAAA, SRV,
headless); pods resolve short names through their namespace's search path; a lab file that
brings its own DNS pod gets none."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from ciliary.lab import manager, schema
from ciliary.lab.state import LabRecord
from tests.kubectl import get_json, kubectl, wait_for

from .conftest import LAB_TEMPLATE, Lab

# the conftest lab, shared: the pod these tests add is theirs, their Services are deleted
SHARES_LAB = True


def _query(lab: Lab, dns_ip: str, name: str, *args: str) -> tuple[int, str]:
    res = lab.run(
        "default/client",
        "ciliary", "workload", "dns-query", name, "--server", dns_ip, "--timeout", "2", *args,
    )  # fmt: skip
    return res.returncode, (res.stdout + res.stderr).strip()


def _answered(
    lab: Lab, dns_ip: str, name: str, *args: str, expect: str | None = None, timeout: float = 10
) -> str:
    """The output of the first query of ``name`` that succeeds (and prints ``expect``): the
    records follow the API through the controller manager's watch (a Service's IPv4 and IPv6
    EndpointSlices, say, arrive one after the other), so a bounded wait, no sleep."""
    last = ""

    def once() -> str | None:
        nonlocal last
        status, last = _query(lab, dns_ip, name, *args)
        return last if status == 0 and expect in (None, last) else None

    try:
        return wait_for(f"{name} {' '.join(args)}", once, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{name} {' '.join(args)}: last answer {last!r}") from None


def _dns_ip(lab: Lab) -> str:
    """The DNS pod's address, once its server answers with the file's pods (it starts with the
    lab, and the records follow the API: bounded wait)."""
    dns_ip = manager.cluster_dns_ip(lab.name)
    assert dns_ip is not None
    _answered(lab, dns_ip, "server.shop.pod.cluster.local", timeout=20)
    return dns_ip


def test_dns_pod_is_created(lab: Lab) -> None:
    pods = {f"{p.namespace}/{p.name}": p for p in manager.status(lab.name).pods}
    coredns = pods["kube-system/coredns"]
    assert coredns.labels == {"k8s-app": "kube-dns"} and coredns.running
    assert coredns.node == lab.node
    assert manager.cluster_dns_ip(lab.name) == coredns.ipv4
    # the highest address of the node's CIDR: the file's pods keep the first ones
    assert coredns.ipv4 is not None and coredns.ipv4.endswith(".254")
    # the controller manager's records: the pods once the API reports their addresses
    server4, server6 = lab.pod_ip("shop/server"), lab.pod_ip("shop/server", 6)
    records = wait_for("the server pod's records", lambda: _records_with(lab, "server.shop.pod"))
    assert records["server.shop.pod.cluster.local."] == {"A": [server4], "AAAA": [server6]}
    assert records[f"{server4.replace('.', '-')}.shop.pod.cluster.local."] == {"A": [server4]}
    assert records["coredns.kube-system.pod.cluster.local."]["A"] == [coredns.ipv4]


def _records_with(lab: Lab, part: str) -> dict[str, dict[str, list[str]]] | None:
    records: dict[str, dict[str, list[str]]] = json.loads(
        manager.dns_records_file(lab.name).read_text()
    )
    return records if any(part in name for name in records) else None


def test_kube_dns_service(lab: Lab) -> None:
    """kubeadm's kube-dns: 10.96.0.10 and fd00:10:96::a, its EndpointSlices name the DNS pod."""
    kubeconfig = manager.kubeconfig(lab.name)
    svc = get_json(kubeconfig, "-n", "kube-system", "service", "kube-dns")
    assert svc["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert svc["metadata"]["labels"]["kubernetes.io/name"] == "CoreDNS"
    assert svc["spec"]["clusterIPs"] == ["10.96.0.10", "fd00:10:96::a"]
    assert svc["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
    ]
    coredns = lab.pod_ip("kube-system/coredns")

    def endpoints() -> bool:
        slices = get_json(
            kubeconfig,
            "-n",
            "kube-system",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=kube-dns",
        )["items"]
        return any(coredns in e["addresses"] for s in slices for e in s.get("endpoints") or [])

    wait_for("kube-dns's endpoints", endpoints, timeout=10)
    dns_ip = _dns_ip(lab)
    name = "kube-dns.kube-system.svc.cluster.local"
    assert _answered(lab, dns_ip, name) == f"{name}. A -> NOERROR, 10.96.0.10"
    assert _query(lab, dns_ip, name, "--type", "AAAA") == (
        0,
        f"{name}. AAAA -> NOERROR, fd00:10:96::a",
    )
    # the cluster DNS is itself a Service: UDP and TCP through its ClusterIPs (the agents'
    # service datapath translates them to the DNS pod), both families
    server = f"server.shop.pod.cluster.local. A -> NOERROR, {lab.pod_ip('shop/server')}"
    for vip, over in (("10.96.0.10", ()), ("10.96.0.10", ("--tcp",)), ("fd00:10:96::a", ())):
        got = _answered(lab, vip, "server.shop.pod.cluster.local", *over, expect=server)
        assert got == server, (vip, over)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_pod_names_resolve(lab: Lab, tcp: bool) -> None:
    dns_ip = _dns_ip(lab)
    over = ["--tcp"] if tcp else []
    server4, server6 = lab.pod_ip("shop/server"), lab.pod_ip("shop/server", 6)
    status, out = _query(lab, dns_ip, "server.shop.pod.cluster.local", *over)
    assert (status, out) == (0, f"server.shop.pod.cluster.local. A -> NOERROR, {server4}")
    status, out = _query(lab, dns_ip, "server.shop.pod.cluster.local", "--type", "AAAA", *over)
    assert (status, out) == (0, f"server.shop.pod.cluster.local. AAAA -> NOERROR, {server6}")
    dashed = f"{server4.replace('.', '-')}.shop.pod.cluster.local"
    assert _query(lab, dns_ip, dashed, *over) == (0, f"{dashed}. A -> NOERROR, {server4}")
    status, out = _query(lab, dns_ip, "nobody.shop.pod.cluster.local", *over)
    assert status == 1 and "NXDOMAIN" in out
    status, _ = _query(lab, dns_ip, "example.com", "--expect-rcode", "REFUSED", *over)
    assert status == 0


def test_dns_over_ipv6(lab: Lab) -> None:
    _dns_ip(lab)
    coredns6 = next(
        p.ipv6
        for p in manager.status(lab.name).pods
        if (p.namespace, p.name) == ("kube-system", "coredns")
    )
    assert coredns6 is not None and ip_address(coredns6).version == 6
    status, out = _query(lab, coredns6, "server.shop.pod.cluster.local")
    assert (status, out) == (
        0,
        f"server.shop.pod.cluster.local. A -> NOERROR, {lab.pod_ip('shop/server')}",
    )


def test_pods_added_later_resolve(lab: Lab) -> None:
    dns_ip = _dns_ip(lab)
    extra = lab.file.parent / "dns-extra.yaml"
    extra.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: later, namespace: shop}\n"
        "spec:\n  containers:\n  - name: m\n    command: [ciliary, workload, pause]\n"
    )
    manager.apply(extra, name=lab.name)
    later = lab.pod_ip("shop/later")
    out = _answered(lab, dns_ip, "later.shop.pod.cluster.local", "--tcp")
    assert out == f"later.shop.pod.cluster.local. A -> NOERROR, {later}"


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: server}
  ipFamilyPolicy: PreferDualStack
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: server}
  ports: [{name: echo, port: 7, protocol: TCP}]
"""


def test_services_resolve_and_go_away(lab: Lab) -> None:
    """A Service and a headless one made with kubectl: A/AAAA (ClusterIPs; the pod's address),
    SRV of their named ports, the short names through the pods' search path; deleted: NXDOMAIN
    within seconds."""
    dns_ip = _dns_ip(lab)
    kubeconfig = manager.kubeconfig(lab.name)
    kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICES)
    web = get_json(kubeconfig, "-n", "shop", "service", "web")["spec"]["clusterIPs"]
    assert len(web) == 2
    name = "web.shop.svc.cluster.local"
    assert _answered(lab, dns_ip, name) == f"{name}. A -> NOERROR, {web[0]}"
    assert _query(lab, dns_ip, name, "--type", "AAAA") == (0, f"{name}. AAAA -> NOERROR, {web[1]}")
    srv = f"_http._tcp.{name}"
    assert _query(lab, dns_ip, srv, "--type", "SRV", "--tcp") == (
        0,
        f"{srv}. SRV -> NOERROR, 0 100 80 {name}.",
    )
    server4 = lab.pod_ip("shop/server")
    db = "db.shop.svc.cluster.local"
    assert _answered(lab, dns_ip, db) == f"{db}. A -> NOERROR, {server4}"
    # one SRV per endpoint: the dual-stack pod is an endpoint of each family's slice
    server6 = lab.pod_ip("shop/server", 6)
    targets = [
        f"0 50 7 {ip.replace('.', '-').replace(':', '-')}.{db}." for ip in (server4, server6)
    ]
    expect = f"_echo._tcp.{db}. SRV -> NOERROR, {' '.join(targets)}"
    assert _answered(lab, dns_ip, f"_echo._tcp.{db}", "--type", "SRV", expect=expect) == expect
    # ClusterFirst: the pods' resolv.conf, glibc's resolver through the search path
    conf = lab.run("shop/server", "cat", "/etc/resolv.conf").stdout
    assert "search shop.svc.cluster.local svc.cluster.local cluster.local\n" in conf
    # kube-dns's ClusterIPs: DNS through the Service (the datapath translates it to the pod)
    assert "nameserver 10.96.0.10\nnameserver fd00:10:96::a\n" in conf
    assert "options ndots:5\n" in conf
    res = lab.run("default/client", "getent", "ahostsv4", "web.shop")
    assert res.returncode == 0 and res.stdout.split()[0] == web[0], res
    short = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('web', 80)}))"
    res = lab.run("shop/server", "python3", "-c", short)
    assert res.returncode == 0 and res.stdout.strip() == str(sorted(web)), res
    # deleted: gone from the zone within seconds
    kubectl(kubeconfig, "-n", "shop", "delete", "service", "web", "db")
    for gone in (name, db):
        out = _answered(lab, dns_ip, gone, "--expect-rcode", "NXDOMAIN", timeout=5)
        assert out == f"{gone}. A -> NXDOMAIN, no answers"


def test_a_file_with_its_own_dns_pod_gets_none() -> None:
    own = LAB_TEMPLATE.format(lab="x", node="n1", aggregation="medium").replace(
        "labels: {app: server}", "labels: {app: server, k8s-app: kube-dns}"
    )
    lab_file = schema.parse_documents(own, "own.yaml", require_lab=True)
    rec = LabRecord(name="x", file=None, created_at=0)
    assert manager._cluster_dns_pod(rec, lab_file) is None
    plain = LAB_TEMPLATE.format(lab="x", node="n1", aggregation="medium")
    pod = manager._cluster_dns_pod(rec, schema.parse_documents(plain, "p.yaml", require_lab=True))
    assert pod is not None and pod.key == "kube-system/coredns" and pod.node_name == "n1"
    assert pod.labels == {"k8s-app": "kube-dns"}
    assert pod.argv()[:3] == ["ciliary", "workload", "dns-server"]
    assert json.loads(pod.annotations[schema.REQUESTED_IPS_ANNOTATION]) == [
        "10.200.0.254",
        "fd00:10:200::ff",
    ]
