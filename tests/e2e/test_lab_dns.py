"""The lab's cluster DNS: ``kube-system/coredns`` comes up with the lab, serves every pod's name
(and Kubernetes' dashed-IP form) over UDP and TCP through the datapath, and learns pods added
later; a lab file that brings its own DNS pod gets none."""

from __future__ import annotations

import json
import time
from ipaddress import ip_address

import pytest

from ciliary.lab import manager, schema
from ciliary.lab.state import LabRecord

from .conftest import LAB_TEMPLATE, Lab


def _query(lab: Lab, dns_ip: str, name: str, *args: str) -> tuple[int, str]:
    res = lab.run(
        "default/client",
        "ciliary", "workload", "dns-query", name, "--server", dns_ip, "--timeout", "2", *args,
    )  # fmt: skip
    return res.returncode, (res.stdout + res.stderr).strip()


def _dns_ip(lab: Lab) -> str:
    """The DNS pod's address, once its server answers (it starts with the lab, bounded wait)."""
    dns_ip = manager.cluster_dns_ip(lab.name)
    assert dns_ip is not None
    deadline = time.monotonic() + 20
    while True:
        status, out = _query(lab, dns_ip, "cluster.local", "--expect-rcode", "NOERROR")
        if status == 0:
            return dns_ip
        assert time.monotonic() < deadline, f"the DNS pod never answered: {out}"
        time.sleep(0.3)


def test_dns_pod_is_created(lab: Lab) -> None:
    pods = {f"{p.namespace}/{p.name}": p for p in manager.status(lab.name).pods}
    coredns = pods["kube-system/coredns"]
    assert coredns.labels == {"k8s-app": "kube-dns"} and coredns.running
    assert coredns.node == lab.node
    assert manager.cluster_dns_ip(lab.name) == coredns.ipv4
    # the highest address of the node's CIDR: the file's pods keep the first ones
    assert coredns.ipv4 is not None and coredns.ipv4.endswith(".254")
    records = json.loads(manager.dns_records_file(lab.name).read_text())
    server4, server6 = lab.pod_ip("shop/server"), lab.pod_ip("shop/server", 6)
    assert records["server.shop.pod.cluster.local."] == [server4, server6]
    assert records[f"{server4.replace('.', '-')}.shop.pod.cluster.local."] == [server4]
    assert records["coredns.kube-system.pod.cluster.local."][0] == coredns.ipv4


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
    status, out = _query(lab, dns_ip, "later.shop.pod.cluster.local", "--tcp")
    assert (status, out) == (0, f"later.shop.pod.cluster.local. A -> NOERROR, {later}")


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
