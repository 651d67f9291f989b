"""Endpoint interfaces: the veth pair that plugs a pod into its node, and the node's host device.

Layout (as Cilium's): the pod side is ``eth0`` in the pod's netns with a /32 (and /128) address,
an on-link route to the node's router address, a default route via it and a *permanent*
neighbour entry mapping the router address to the node-side MAC, so the pod never ARPs for its
gateway (IPv6: also the service loopback address fe80::1, a hairpin's source). The node side
is ``lxc<hash>`` (15 chars, stable for a container id and ifname) with a host route to the
pod's address; the tc programs on it do the forwarding.

Everything here is synchronous netlink; the agent calls it from a worker thread. Every function
is idempotent on retry (a leftover interface of the same name is removed first) because a CNI ADD
may be retried after a crash half-way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from ciliary.datapath.linux import rtnl
from ciliary.datapath.linux.errors import LinkError, NetnsNotFoundError

NUD_PERMANENT = 0x80
IFF_UP = 0x1
IFF_NOARP = 0x80
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253
LOOPBACK_INDEX = 1
"""``lo`` is the first interface of every network namespace (the kernel registers it first)."""
HOST_DEVICE = "ciliary_host"
HOST_PEER = "ciliary_net"
TUNNEL_DEVICE = "ciliary_vxlan"
LXC_PREFIX = "lxc"
SERVICE_LOOPBACK_V6 = IPv6Address("fe80::1")
"""Upstream's ``--ipv6-service-loopback-address``: the source bpf/lib/lb.h gives a pod's
connection to a Service that picked the pod itself (hairpin). Link-local, so the pod answers it
on eth0 by neighbour: a permanent entry naming the node side's MAC, as for its router."""


@dataclass(frozen=True)
class PodInterface:
    lxc: str
    lxc_ifindex: int
    node_mac: str
    ifname: str
    pod_ifindex: int
    mac: str


def lxc_name(container_id: str, ifname: str) -> str:
    """Node-side device name: ``lxc`` + 12 hex digits of the attachment's hash (15 chars)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return LXC_PREFIX + digest[:12]


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


@contextlib.contextmanager
def in_netns(netns_path: str) -> Iterator[None]:
    """Run the block with the *calling thread* inside ``netns_path``, then switch back.

    setns(2) on a network namespace moves only the calling thread, so this is safe in a worker
    thread while the event loop's thread stays in the node namespace. Sockets opened inside keep
    the pod namespace after the switch back; /proc/sys/net writes inside hit the pod's sysctls.
    """
    if not Path(netns_path).exists():
        raise NetnsNotFoundError(f"network namespace {netns_path} does not exist")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _netns.setns(target, flags=0)
        try:
            yield
        finally:
            _netns.setns(own, flags=0)
    finally:
        os.close(target)
        os.close(own)


@contextlib.contextmanager
def _ipr(netns_path: str | None = None) -> Iterator[Any]:
    if netns_path is not None:
        with in_netns(netns_path), _ipr(None) as ipr:
            yield ipr
        return
    try:
        ipr = IPRoute()
    except OSError as err:
        raise LinkError(f"cannot open netlink: {err}") from err
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NetlinkError as err:
        raise LinkError(f"{what}: {os.strerror(err.code)}") from err


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def set_up_loopback(netns_path: str | None = None) -> None:
    with _ipr(netns_path) as ipr:
        idx = _index(ipr, "lo")
        if idx is not None:
            _netlink("set lo up", ipr.link, "set", index=idx, state="up")


def create_pod_interface(
    *,
    netns_path: str,
    container_id: str,
    ifname: str,
    ipv4: IPv4Address | None,
    ipv6: IPv6Address | None,
    router_v4: IPv4Address | None,
    router_v6: IPv6Address | None,
    mtu: int = 1500,
) -> PodInterface:
    """Create and configure the veth pair of one pod attachment; returns what was made.

    Few round trips, because each is most of a millisecond of pyroute2 and this is on every
    CNI ADD's path: the pair is made with its peer already in the pod's netns under its final
    name and MTU and the node side up (no temporary name, move and rename), interfaces are
    fetched by name in one request each (their index and MAC together), and ``lo`` is index 1
    in every netns."""
    lxc = lxc_name(container_id, ifname)
    if not Path(netns_path).exists():
        raise NetnsNotFoundError(f"network namespace {netns_path} does not exist")
    with _ipr() as ipr:
        _delete_if_present(ipr, lxc)  # a retried ADD after a crash half-way
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            ipr.link(
                "add", ifname=lxc, kind="veth", mtu=mtu, state="up",
                peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu},
            )  # fmt: skip
        except NetlinkError as err:
            if err.code == errno.EEXIST:
                raise LinkError(f"interface {ifname} already exists in {netns_path}") from err
            raise LinkError(f"create veth {lxc}: {os.strerror(err.code)}") from err
        finally:
            os.close(fd)
        node_link = _get(ipr, lxc)
        if node_link is None:
            raise LinkError(f"veth {lxc} vanished right after creation")
        lxc_idx = int(node_link["index"])
        node_mac = str(_attr(node_link, "IFLA_ADDRESS"))

        with _ipr(netns_path) as pr:
            pod_link = _get(pr, ifname)
            if pod_link is None:
                raise LinkError(f"veth peer {ifname} did not arrive in {netns_path}")
            pidx = int(pod_link["index"])
            pod_mac = str(_attr(pod_link, "IFLA_ADDRESS"))
            # No DAD on the pod's point-to-point link: a tentative link-local would delay the
            # node's neighbour discovery for a freshly started pod by seconds.
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
            # the rest of the pod's side in one batch of requests (rtnl), in this order
            lladdr = bytes.fromhex(node_mac.replace(":", ""))
            requests = [
                rtnl.link_up(f"set {ifname} up", pidx),
                rtnl.link_up("set lo up", LOOPBACK_INDEX),
            ]
            if ipv4 is not None and router_v4 is not None:
                requests += [
                    rtnl.address(f"add {ipv4}", pidx, ipv4, 32),
                    rtnl.route(
                        f"route to {router_v4}", router_v4, 32, oif=pidx, scope=RT_SCOPE_LINK
                    ),
                    rtnl.route("default route", IPv4Address(0), 0, gateway=router_v4),
                    rtnl.neighbour(
                        f"neighbour {router_v4}", pidx, router_v4, lladdr, NUD_PERMANENT
                    ),
                ]
            if ipv6 is not None and router_v6 is not None:
                requests += [
                    rtnl.address(f"add {ipv6}", pidx, ipv6, 128, flags=IFA_F_NODAD),
                    rtnl.route(f"route to {router_v6}", router_v6, 128, oif=pidx),
                    rtnl.route("default route v6", IPv6Address(0), 0, gateway=router_v6, oif=pidx),
                    *(
                        rtnl.neighbour(f"neighbour {n}", pidx, n, lladdr, NUD_PERMANENT)
                        for n in (router_v6, SERVICE_LOOPBACK_V6)
                    ),
                ]
            rtnl.run(requests)

        if ipv4 is not None:
            _netlink(
                f"host route {ipv4}", ipr.route, "replace",
                dst=f"{ipv4}/32", oif=lxc_idx, scope=RT_SCOPE_LINK,
            )  # fmt: skip
        if ipv6 is not None:
            _netlink(
                f"host route {ipv6}", ipr.route, "replace",
                dst=f"{ipv6}/128", oif=lxc_idx, family=socket.AF_INET6,
            )  # fmt: skip
    return PodInterface(lxc, lxc_idx, node_mac, ifname, pidx, pod_mac)


def _get(ipr: Any, ifname: str) -> Any | None:
    """The link named ``ifname`` (one request), None when there is none."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise LinkError(f"get {ifname}: {os.strerror(err.code)}") from err


def _delete_if_present(ipr: Any, ifname: str) -> None:
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise LinkError(f"delete stale {ifname}: {os.strerror(err.code)}") from err


def delete_link(ifname: str) -> bool:
    """Delete a node-netns link (its veth peer goes with it); False when absent."""
    with _ipr() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as err:
            if err.code == 19:  # ENODEV: went away meanwhile
                return False
            raise LinkError(f"delete {ifname}: {os.strerror(err.code)}") from err
    return True


def link_index(ifname: str) -> int | None:
    with _ipr() as ipr:
        return _index(ipr, ifname)


def list_links(prefix: str) -> dict[str, int]:
    """Node-netns links whose name starts with ``prefix``: name → ifindex."""
    with _ipr() as ipr:
        out: dict[str, int] = {}
        for msg in ipr.get_links():
            name = str(_attr(msg, "IFLA_IFNAME"))
            if name.startswith(prefix):
                out[name] = int(msg["index"])
        return out


def pod_interface_addresses(netns_path: str, ifname: str) -> list[str]:
    """Addresses on the pod's interface (for CHECK / restore verification)."""
    with _ipr(netns_path) as pr:
        idx = _index(pr, ifname)
        if idx is None:
            return []
        return [str(_attr(a, "IFA_ADDRESS")) for a in pr.get_addr(index=idx)]


def ensure_host_device(router_v4: IPv4Address | None, router_v6: IPv6Address | None) -> int:
    """The node's own address holder, as Cilium's cilium_host/cilium_net veth pair: the router
    addresses (the pods' gateway) live on ``ciliary_host``."""
    with _ipr() as ipr:
        idx = _index(ipr, HOST_DEVICE)
        if idx is None:
            _netlink(
                f"create {HOST_DEVICE}", ipr.link, "add",
                ifname=HOST_DEVICE, kind="veth", peer={"ifname": HOST_PEER},
            )  # fmt: skip
            idx = _index(ipr, HOST_DEVICE)
            if idx is None:
                raise LinkError(f"{HOST_DEVICE} vanished right after creation")
        peer = _index(ipr, HOST_PEER)
        if peer is not None:
            _netlink(f"set {HOST_PEER} up", ipr.link, "set", index=peer, state="up")
        # NOARP (as cilium_host): the node's packets to remote pods routed here leave with
        # its own MAC, never waiting on a neighbour nobody answers; cil_from_host tunnels them
        _netlink(
            f"set {HOST_DEVICE} up noarp", ipr.link, "set",
            index=idx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP,
        )  # fmt: skip
        have = {str(_attr(a, "IFA_ADDRESS")) for a in ipr.get_addr(index=idx)}
        if router_v4 is not None and str(router_v4) not in have:
            _netlink(
                f"add {router_v4}", ipr.addr, "add", index=idx, address=str(router_v4), prefixlen=32
            )
        if router_v6 is not None and str(router_v6) not in have:
            _netlink(
                f"add {router_v6}", ipr.addr, "add",
                index=idx, address=str(router_v6), prefixlen=128, flags=IFA_F_NODAD,
            )  # fmt: skip
        lo = _index(ipr, "lo")
        if lo is not None:
            _netlink("set lo up", ipr.link, "set", index=lo, state="up")
        return idx


def _vxlan_settings(msg: Any) -> tuple[str | None, int | None, bool]:
    """(kind, UDP port, external) of a link message."""
    info = _attr(msg, "IFLA_LINKINFO")
    if info is None:
        return None, None, False
    kind = info.get_attr("IFLA_INFO_KIND")
    data = info.get_attr("IFLA_INFO_DATA")
    if kind != "vxlan" or data is None:
        return kind, None, False
    port = data.get_attr("IFLA_VXLAN_PORT")
    return kind, port, bool(data.get_attr("IFLA_VXLAN_COLLECT_METADATA"))


def ensure_tunnel_device(port: int, mtu: int) -> int:
    """The node's VXLAN device ``ciliary_vxlan`` (as Cilium's ``cilium_vxlan``): external
    (collect_md: the programs set and read each packet's tunnel key, VNI and remote node), no
    learning, UDP ``port``; up. Returns its ifindex.

    Restart contract: a device that already is such a VXLAN device on ``port`` is kept as it is
    (its ifindex, its attached program, the packets in flight), so restarting the agent never
    interrupts cross-node connections. Only one of another kind or port (a changed
    ``--tunnel-port``) is replaced."""
    with _ipr() as ipr:
        idx = _index(ipr, TUNNEL_DEVICE)
        if idx is not None:
            kind, have_port, external = _vxlan_settings(ipr.link("get", index=idx)[0])
            if (kind, have_port, external) != ("vxlan", port, True):
                _netlink(f"delete {TUNNEL_DEVICE} ({kind}, port {have_port})", ipr.link,
                         "del", index=idx)  # fmt: skip
                idx = None
        if idx is None:
            _netlink(
                f"create {TUNNEL_DEVICE}", ipr.link, "add",
                ifname=TUNNEL_DEVICE, kind="vxlan", vxlan_port=port,
                vxlan_collect_metadata=1, vxlan_learning=0, mtu=mtu,
            )  # fmt: skip
            idx = _index(ipr, TUNNEL_DEVICE)
            if idx is None:
                raise LinkError(f"{TUNNEL_DEVICE} vanished right after creation")
        _netlink(f"set {TUNNEL_DEVICE} up", ipr.link, "set", index=idx, state="up")
        return idx


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's netns (``net.ipv4.ip_forward`` form)."""
    # keys with interface names (which may contain dots) are given with slashes
    path = Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))
    try:
        path.write_text(value)
    except OSError as err:
        raise LinkError(f"sysctl {key}={value}: {err.strerror}") from err


@dataclass(frozen=True)
class PodInterfaceState:
    """What CNI CHECK compares with what ADD made."""

    exists: bool
    addresses: list[str]
    default_gateways: list[str]
    up: bool


def inspect_pod_interface(netns_path: str, ifname: str) -> PodInterfaceState:
    with _ipr(netns_path) as pr:
        idx = _index(pr, ifname)
        if idx is None:
            return PodInterfaceState(False, [], [], False)
        link = pr.link("get", index=idx)[0]
        up = bool(link["flags"] & 1)
        addrs = [str(_attr(a, "IFA_ADDRESS")) for a in pr.get_addr(index=idx)]
        gateways: list[str] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in pr.get_routes(family=family):
                if route["dst_len"] == 0 and _attr(route, "RTA_GATEWAY"):
                    gateways.append(str(_attr(route, "RTA_GATEWAY")))
        return PodInterfaceState(True, addrs, gateways, up)


NODE_ROUTE_PROTOCOL = 193
"""The route protocol of the node manager's native routes (a number of ours, unused by
iproute2's list): a restarted agent finds the routes it made by it and prunes stale ones."""


def node_routes() -> dict[IPv4Network | IPv6Network, IPv4Address | IPv6Address]:
    """The node manager's routes in the calling thread's netns: pod CIDR → gateway (native
    mode) or source address (tunnel mode's routes via ``ciliary_host``)."""
    out: dict[IPv4Network | IPv6Network, IPv4Address | IPv6Address] = {}
    with _ipr() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, proto=NODE_ROUTE_PROTOCOL):
                if route["proto"] != NODE_ROUTE_PROTOCOL:
                    continue
                dst = _attr(route, "RTA_DST")
                gw = _attr(route, "RTA_GATEWAY") or _attr(route, "RTA_PREFSRC")
                if dst is None or gw is None:
                    continue
                out[ip_network(f"{dst}/{route['dst_len']}")] = ip_address(gw)
    return out


def replace_node_route(
    prefix: IPv4Network | IPv6Network, via: IPv4Address | IPv6Address, device: str | None
) -> None:
    """``ip route replace PREFIX via VIA [dev DEVICE] proto 193`` (idempotent); without a
    device the kernel finds the one ``via`` is on-link on."""
    with _ipr() as ipr:
        kwargs: dict[str, Any] = {}
        if device is not None:
            idx = _index(ipr, device)
            if idx is None:
                raise LinkError(f"route {prefix} via {via}: device {device} does not exist")
            kwargs["oif"] = idx
        _netlink(
            f"route {prefix} via {via}", ipr.route, "replace",
            dst=str(prefix), gateway=str(via), proto=NODE_ROUTE_PROTOCOL, **kwargs,
        )  # fmt: skip


def replace_host_route(
    prefix: IPv4Network | IPv6Network, src: IPv4Address | IPv6Address, mtu: int
) -> None:
    """Tunnel mode, as Cilium's routes via cilium_host: ``ip route replace PREFIX dev
    ciliary_host src SRC mtu MTU proto 193`` (idempotent). The node's own packets to a remote
    pod CIDR leave from the router address through ``ciliary_host``, whose egress program
    tunnels them; ``mtu`` leaves room for the tunnel header. :func:`node_routes` reports it as
    ``PREFIX → SRC``."""
    with _ipr() as ipr:
        idx = _index(ipr, HOST_DEVICE)
        if idx is None:
            raise LinkError(f"route {prefix} src {src}: device {HOST_DEVICE} does not exist")
        _netlink(
            f"route {prefix} dev {HOST_DEVICE} src {src}", ipr.route, "replace",
            dst=str(prefix), oif=idx, prefsrc=str(src), proto=NODE_ROUTE_PROTOCOL,
            scope=RT_SCOPE_LINK if prefix.version == 4 else 0, metrics={"RTAX_MTU": mtu},
        )  # fmt: skip


def delete_node_route(prefix: IPv4Network | IPv6Network) -> None:
    """Removes the node manager's route to ``prefix``; absent is fine."""
    with _ipr() as ipr:
        try:
            ipr.route("del", dst=str(prefix), proto=NODE_ROUTE_PROTOCOL)
        except NetlinkError as err:
            if err.code != errno.ESRCH:
                raise LinkError(f"delete route {prefix}: {os.strerror(err.code)}") from err


PROXY_ROUTE_TABLE = 2004
"""Upstream's ``linux_defaults.RouteTableToProxy``: local delivery of packets to the L7 proxy."""
PROXY_RULE_PRIORITY = 9
"""Upstream's ``RulePriorityToProxyIngress``: before the main table (priority 32766)."""
MARK_MAGIC_TO_PROXY = 0x0200
MARK_MAGIC_HOST_MASK = 0x0F00


def ensure_proxy_routing() -> None:
    """Policy routing of the packets bpf_lxc hands to an L7 proxy's socket (bpf/lib/proxy.h),
    in the calling thread's netns, both families, idempotent: ``ip rule add fwmark
    0x200/0xf00 lookup 2004 pref 9`` and ``ip route replace local default dev lo table 2004``,
    as upstream's BPF TPROXY setup. Whatever their destination (the pod's original one), such
    packets are delivered locally, where the socket bpf_sk_assign chose takes them."""
    with _ipr() as ipr:
        lo = _index(ipr, "lo")
        if lo is None:
            raise LinkError("proxy routing: no loopback device in the node netns")
        for family, default in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            present = any(
                rule.get_attr("FRA_TABLE") == PROXY_ROUTE_TABLE
                and rule.get_attr("FRA_PRIORITY") == PROXY_RULE_PRIORITY
                and rule.get_attr("FRA_FWMARK") == MARK_MAGIC_TO_PROXY
                for rule in ipr.get_rules(family=family)
            )
            if not present:
                _netlink(
                    f"proxy rule (family {family})", ipr.rule, "add", family=family,
                    table=PROXY_ROUTE_TABLE, priority=PROXY_RULE_PRIORITY,
                    fwmark=MARK_MAGIC_TO_PROXY, fwmask=MARK_MAGIC_HOST_MASK,
                )  # fmt: skip
            _netlink(
                f"proxy route {default}", ipr.route, "replace", family=family, dst_len=0,
                type="local", scope=254, table=PROXY_ROUTE_TABLE, oif=lo,
            )  # fmt: skip
