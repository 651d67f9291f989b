"""A ClusterFirst pod's resolv.conf (kubelet's search path, ndots, nameservers), rewritten in
place so the bind mounts of it see the DNS pod's address once it has one; kube-dns's addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciliary.lab import controlplane, dnsconfig


def test_resolv_conf_is_kubelets_cluster_first() -> None:
    assert dnsconfig.resolv_conf("shop", ["10.200.0.254", "fd00:10:200::ff"]) == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.200.0.254\n"
        "nameserver fd00:10:200::ff\n"
        "options ndots:5\n"
    )
    # before the DNS pod has an address: the search path alone (glibc then asks 127.0.0.1)
    assert "nameserver" not in dnsconfig.resolv_conf("default", [])


def test_nameservers_kube_dns_or_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = ["10.200.0.254"]
    assert dnsconfig.nameservers(pod, kube_dns=True) == ["10.96.0.10", "fd00:10:96::a"]
    assert dnsconfig.nameservers(pod, kube_dns=False) == pod  # a lab file's own DNS pod
    monkeypatch.setattr(dnsconfig, "NAMESERVER_IS_CLUSTER_IP", False)
    assert dnsconfig.nameservers(pod, kube_dns=True) == pod


def test_kube_dns_service_is_kubeadms() -> None:
    svc = controlplane.kube_dns_service()
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    assert svc["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    single = controlplane.kube_dns_service("10.43.0.0/16")
    assert single["spec"]["clusterIPs"] == ["10.43.0.10"]
    assert single["spec"]["ipFamilyPolicy"] == "SingleStack"


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "resolv" / "shop.conf"
    dnsconfig.write_in_place(path, "a much longer first version\n")
    inode = path.stat().st_ino
    dnsconfig.write_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode
    mtime = path.stat().st_mtime_ns
    dnsconfig.write_in_place(path, "short\n")  # unchanged: not written (glibc would re-read)
    assert path.stat().st_mtime_ns == mtime
