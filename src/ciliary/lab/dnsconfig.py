"""A pod's DNS configuration: the ``/etc/resolv.conf`` kubelet gives a ``ClusterFirst`` pod.

Kubelet writes one resolv.conf per pod and the runtime binds it over the container's
``/etc/resolv.conf``: the search path of the pod's namespace (``<ns>.svc.cluster.local
svc.cluster.local cluster.local``), ``options ndots:5`` and the cluster DNS Service's address
(kubelet's ``--cluster-dns``) as nameserver, so ``getent hosts web`` in namespace ``shop`` asks
for ``web.shop.svc.cluster.local`` first. The lab does the same (``lab.manager`` writes one file
per namespace and ``podsandbox`` binds it in each container's and ``lab exec``'s mount view; the
cluster DNS pod itself keeps the machine's, as CoreDNS runs with ``dnsPolicy: Default``).

The nameserver: kube-dns's ClusterIPs (10.96.0.10, fd00:10:96::a), as kubelet writes, when the
lab runs its own DNS pod behind that Service (the agents' service datapath translates them to
the pod: DNS itself goes through a Service, as in a cluster). A lab file that brings its own DNS
pod has no kube-dns Service of the lab's, so its pods name that pod's own addresses, as they all
did before ClusterIPs were translated (:data:`NAMESERVER_IS_CLUSTER_IP` = False goes back to
that, one switch). A pod's address is known only once it runs, and pods start concurrently with
it, so the files are rewritten in place (never renamed: a bind mount keeps the inode it was given)
when it does; glibc re-reads a resolv.conf whose modification time changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ciliary.lab import controlplane

CLUSTER_DOMAIN = "cluster.local"
NDOTS = 5
RESOLV_CONF = Path("/etc/resolv.conf")
NAMESERVER_IS_CLUSTER_IP = True
"""Pods ask kube-dns's ClusterIPs (kubelet's ``--cluster-dns``), which the service datapath
translates; False: the DNS pod's own addresses (no service translation needed)."""


def nameservers(dns_pod_addresses: Sequence[str], *, kube_dns: bool) -> list[str]:
    """The nameservers of a ClusterFirst pod: kube-dns's ClusterIPs when the lab runs that
    Service (``kube_dns``) and :data:`NAMESERVER_IS_CLUSTER_IP`, else the DNS pod's addresses."""
    if NAMESERVER_IS_CLUSTER_IP and kube_dns:
        return [str(ip) for ip in controlplane.kube_dns_service()["spec"]["clusterIPs"]]
    return list(dns_pod_addresses)


def resolv_conf(namespace: str, servers: Sequence[str], domain: str = CLUSTER_DOMAIN) -> str:
    """Kubelet's resolv.conf for a ClusterFirst pod of ``namespace``."""
    lines = [f"search {namespace}.svc.{domain} svc.{domain} {domain}"]
    lines += [f"nameserver {ip}" for ip in servers[:3]]  # glibc's MAXNS
    lines.append(f"options ndots:{NDOTS}")
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """``text`` into ``path`` keeping its inode (bind mounts of it see the change); nothing is
    written when it already holds ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.pread(fd, len(data) + 1, 0) == data:
            return
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
