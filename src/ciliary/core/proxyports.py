"""The node's L7 proxy ports: one listening port per proxy, by upstream's names.

Cilium keeps a table of its proxies (``pkg/proxy/proxyports``): ``cilium-dns-egress`` (the DNS
proxy in the agent), ``cilium-http-egress`` and ``cilium-http-ingress`` (Envoy), each with a port
on the node. The datapath redirects a connection whose policy entry carries a port to the socket
listening there (``bpf/lib/proxy.h``), so three parties must agree on the numbers: the policy
computation (which writes them into the policy maps, :mod:`ciliary.policy.resolve`), the proxies
that bind them (the agent's DNS proxy, the node's Envoy) and whoever explains a flow. This module
is that one place: the names, the value every party is handed (:class:`ProxyPorts`) and the
allocation at agent start (:func:`allocate`).

A port given on the command line (``--tofqdns-proxy-port``) is used as is; ``0`` (upstream's
default, "OS-assigned") gets the port the previous agent of the node used (saved in the state
directory, :data:`SAVED_PORTS`, as upstream's ``proxy_ports_state.json``) when it is still free
or still held by that proxy (the node's Envoy outlives an agent restart and keeps listening on
its ports), else the lowest port of the range (upstream's 10000-20000) free for both TCP and UDP
on the wildcard addresses of the agent's network namespace. So the numbers stay across a restart:
connections redirected before it keep their policy entries and the listener they reached.
The proxies bind their listeners on exactly these ports: TCP and UDP
on ``0.0.0.0`` and ``::``, with ``IP_TRANSPARENT`` (see docs/architecture.md, "L7 proxy
redirect", for what a proxy's sockets must do).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ciliary.core.atomicfile import write_json

__all__ = [
    "DNS_EGRESS",
    "HTTP_EGRESS",
    "HTTP_INGRESS",
    "PORT_RANGE",
    "PROXY_NAMES",
    "SAVED_PORTS",
    "ProxyPorts",
    "allocate",
    "load",
    "proxy_for_l7",
    "save",
]

DNS_EGRESS: Final = "cilium-dns-egress"
HTTP_EGRESS: Final = "cilium-http-egress"
HTTP_INGRESS: Final = "cilium-http-ingress"
PROXY_NAMES: Final = (DNS_EGRESS, HTTP_EGRESS, HTTP_INGRESS)

PORT_RANGE: Final = (10000, 20000)
"""Where ports not given are taken from (upstream's ``ProxyPortrangeMin/Max``)."""
SAVED_PORTS: Final = "proxy_ports.json"
"""The agent's last ports, in its state directory: ``{name: port}``."""


def proxy_for_l7(kind: str, egress: bool) -> str | None:
    """The proxy that serves L7 rules of ``kind`` (``http``, ``dns``, …) in one direction, or
    None when no proxy of this node serves them (kafka, generic ``l7``, DNS on ingress)."""
    if kind == "http":
        return HTTP_EGRESS if egress else HTTP_INGRESS
    if kind == "dns" and egress:
        return DNS_EGRESS
    return None


@dataclass(frozen=True)
class ProxyPorts:
    """Proxy name → listening port (host order) on this node."""

    ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name, port in self.ports.items():
            if name not in PROXY_NAMES:
                raise ValueError(f"unknown proxy {name!r}: expected one of {PROXY_NAMES}")
            if not 0 < port <= 0xFFFF:
                raise ValueError(f"proxy {name}: port {port} outside 1..65535")
        if len(set(self.ports.values())) != len(self.ports):
            raise ValueError(f"proxy ports must differ: {dict(self.ports)}")
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))

    def port(self, name: str) -> int:
        """The port of proxy ``name`` (KeyError naming the known ones if it has none)."""
        try:
            return self.ports[name]
        except KeyError:
            raise KeyError(f"no port for proxy {name!r} (have: {sorted(self.ports)})") from None

    def for_l7(self, kind: str, egress: bool) -> int | None:
        """The port traffic under an L7 rule of ``kind`` in one direction is redirected to,
        or None when no proxy here serves it."""
        name = proxy_for_l7(kind, egress)
        return None if name is None else self.ports.get(name)

    def name_of(self, port: int) -> str | None:
        """The proxy listening on ``port`` (for events and ``bpf policy get``)."""
        for name, p in self.ports.items():
            if p == port:
                return name
        return None


def _free(port: int) -> bool:
    """Whether ``port`` can be bound for TCP and UDP on both wildcard addresses here."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                s = socket.socket(family, kind)
            except OSError:
                continue  # family not available in this netns: nothing can hold it there
            try:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
            except OSError:
                return False
            finally:
                s.close()
    return True


def allocate(
    requested: Mapping[str, int],
    names: Iterable[str] = PROXY_NAMES,
    port_range: tuple[int, int] = PORT_RANGE,
    *,
    restored: Mapping[str, int] | None = None,
    held: Collection[str] = (),
) -> ProxyPorts:
    """The ports of ``names``: ``requested[name]`` when given and non-zero, else
    ``restored[name]`` (the previous agent's) when it is free or ``name`` is in ``held`` (its
    proxy still runs and listens there), else the lowest port of ``port_range`` (inclusive) free
    for TCP and UDP in this network namespace and not taken by another proxy. Raises ValueError
    naming the proxy when none is left."""
    lo, hi = port_range
    if not 0 < lo <= hi <= 0xFFFF:
        raise ValueError(f"proxy port range {lo}-{hi}: expected 1 <= min <= max <= 65535")
    out: dict[str, int] = {}
    wanted = list(names)
    for name in wanted:
        port = requested.get(name, 0)
        if port:
            out[name] = port
    taken = set(out.values())
    for name, port in (restored or {}).items():
        usable = name in wanted and name not in out and port not in taken
        if usable and (name in held or _free(port)):
            out[name] = port
            taken.add(port)
    candidate = lo
    for name in wanted:
        if name in out:
            continue
        while candidate <= hi and (candidate in taken or not _free(candidate)):
            candidate += 1
        if candidate > hi:
            raise ValueError(f"proxy {name}: no free port in {lo}-{hi}")
        out[name] = candidate
        taken.add(candidate)
        candidate += 1
    return ProxyPorts(out)


def load(path: Path) -> dict[str, int]:
    """The ports a previous agent saved (:func:`save`); ``{}`` when there is no such file. A
    file that is not ``{name: port}`` of known proxies is ignored (ports are then allocated
    afresh): ValueError is never raised for it, the agent starts."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {
        name: port
        for name, port in doc.items()
        if name in PROXY_NAMES and isinstance(port, int) and 0 < port <= 0xFFFF
    }


def save(path: Path, ports: ProxyPorts) -> None:
    """The node's ports for the next agent (written whole)."""
    write_json(path, dict(ports.ports))
