"""hostPort handled natively (Cilium's ``UpsertHostPortMapping``): a container port with a
``hostPort`` becomes a service of this node, no iptables and no portmap plugin.

Upstream, when a pod of this node with ``ports[].hostPort`` is running with its IPs, the agent
adds a service of type ``HostPort`` named ``<pod>/host-port/<hostPort>`` in the pod's namespace:
its frontends are ``hostIP:hostPort`` (every address of this node when ``hostIP`` is unset or a
wildcard), its backends the pod's IPs at the ``containerPort``; the load balancer then serves it
as a NodePort of this node only (``SVC_FLAG_HOSTPORT``), from the world on the node's addresses
and from pods alike. A pod that stops running, loses its IPs or is deleted takes its services
with it. The names cannot clash with real Services (a Service name has no ``/``).

Sans-IO: :class:`HostPorts` is fed the node's pod informer events and read by the service
syncer next to the Service cache (``agent.daemon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import ip_address
from typing import Any

from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo

__all__ = ["HOST_PORT", "HostPorts", "host_port_services"]

HOST_PORT = "HostPort"
_WILDCARDS = {"0.0.0.0", "::"}


def host_port_services(pod: Mapping[str, Any], node: str) -> list[ServiceInfo]:
    """The HostPort services of one pod (none unless it runs on ``node`` with its IPs)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    status = pod.get("status") or {}
    if (
        spec.get("nodeName") != node
        or meta.get("deletionTimestamp")
        or status.get("phase") != "Running"
    ):
        return []
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    if not ips:
        return []
    out: list[ServiceInfo] = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            host_port = port.get("hostPort")
            if not isinstance(host_port, int) or not 0 < host_port < 65536:
                continue
            protocol = str(port.get("protocol") or "TCP")
            host_ip = port.get("hostIP")
            pinned = [host_ip] if host_ip and host_ip not in _WILDCARDS else []
            families = {ip_address(a).version for a in pinned}
            backends = [ip for ip in ips if not pinned or ip_address(ip).version in families]
            out.append(
                ServiceInfo(
                    namespace=str(meta.get("namespace") or "default"),
                    name=f"{meta.get('name')}/host-port/{host_port}",
                    type=HOST_PORT,
                    cluster_ips=[],
                    ports=[
                        ServicePortInfo(
                            name="", port=host_port, protocol=protocol, node_port=host_port
                        )
                    ],
                    session_affinity="None",
                    external_traffic_policy="Local",
                    external_ips=pinned,  # the frontends when pinned (else: the node's)
                    backends=[
                        BackendInfo(
                            address=ip,
                            node_name=node,
                            ready=True,
                            serving=True,
                            terminating=False,
                            ports={"": L4Addr(protocol=protocol, port=int(port["containerPort"]))},
                        )
                        for ip in backends
                    ],
                )
            )
    return out


class HostPorts:
    """The HostPort services of this node's pods, by pod (namespace, name)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._by_pod: dict[tuple[str, str], list[ServiceInfo]] = {}

    def update(self, pod: Mapping[str, Any], deleted: bool = False) -> set[tuple[str, str]]:
        """Takes a pod event; the keys (namespace, name) of the services that changed."""
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
        new = [] if deleted else host_port_services(pod, self.node)
        old = self._by_pod.get(key, [])
        if new:
            self._by_pod[key] = new
        else:
            self._by_pod.pop(key, None)
        if old == new:
            return set()
        return {(s.namespace, s.name) for s in [*old, *new]}

    def services(self) -> list[ServiceInfo]:
        return [s for svcs in self._by_pod.values() for s in svcs]

    def get(self, namespace: str, name: str) -> ServiceInfo | None:
        pod, sep, _ = name.partition("/host-port/")
        if not sep:
            return None
        return next((s for s in self._by_pod.get((namespace, pod), []) if s.name == name), None)
