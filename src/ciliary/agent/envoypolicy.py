"""The node's HTTP policy for its Envoy: every endpoint's realized policy → proxy listeners.

The policy computation keeps, per allow entry whose traffic goes through a proxy, the L7 rules
behind it (:attr:`ciliary.policy.resolve.EndpointPolicy.l7`, keyed by the policy map key). The
datapath redirects such a connection to the proxy port of its kind and direction
(``ciliary.core.proxyports``); Envoy must then decide each request as the rules say. This
module groups those entries per (endpoint, direction, port) into one filter chain each
(:mod:`.envoyconfig`), the peers of an entry named by the addresses the ipcache gives their
identity (identity 0, every peer: no address check; the world identities: every address, as
their traffic has no more specific identity in the ipcache).

:class:`NodeEnvoy` is the component the agent wires: it starts the supervised Envoy
(:mod:`.envoy`), and on :meth:`NodeEnvoy.changed` (a policy was realized or forgotten, the
cluster's addresses changed) recomputes the whole configuration once (coalesced: one pending
sync at most) and writes what differs. The whole-node recomputation is what keeps it simple
and correct: files that did not change are not rewritten, so Envoy sees only real changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ciliary.agent import envoyconfig as cfg
from ciliary.agent.accesslog import AccessLogReader, HTTPAccessBatch
from ciliary.agent.envoy import EnvoyConfigWriter, EnvoyPaths, EnvoyProcess
from ciliary.core.flow import ReservedIdentity
from ciliary.core.proxyports import HTTP_EGRESS, HTTP_INGRESS, ProxyPorts
from ciliary.policy.api.model import HTTPRule
from ciliary.policy.mapstate import PROTO_TCP, MapKey
from ciliary.policy.resolve import EndpointPolicy

log = logging.getLogger(__name__)

WORLD_IDENTITIES = frozenset(
    {
        int(ReservedIdentity.WORLD),
        int(ReservedIdentity.WORLD_IPV4),
        int(ReservedIdentity.WORLD_IPV6),
    }
)
WORLD_PREFIXES = ("0.0.0.0/0", "::/0")
_DIRECTION: dict[bool, cfg.Direction] = {False: "ingress", True: "egress"}
PROXY_MARK: dict[cfg.Direction, int] = {"ingress": 0x0A00, "egress": 0x0B00}
"""Upstream's ``MagicMarkIngress``/``MagicMarkEgress``, set on the proxy's upstream connections
per the direction of the policy it applies: bpf/lib/proxy.h hands their replies back to Envoy
(either), and never sends the ingress proxy's connections to a proxy again (an egress proxy's
connection to a pod whose ingress names a proxy goes to the ingress listener too)."""


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What the HTTP policy needs of one local endpoint."""

    id: int
    addresses: tuple[str, ...]
    policy: EndpointPolicy | None


def identity_prefixes(records: Iterable[tuple[str, int]]) -> dict[int, tuple[str, ...]]:
    """Identity → its prefixes, from (prefix, identity) pairs of the ipcache."""
    out: dict[int, list[str]] = {}
    for prefix, identity in records:
        out.setdefault(identity, []).append(prefix)
    return {identity: tuple(sorted(p)) for identity, p in out.items()}


def chain_name(ep_id: int, egress: bool, port: int) -> str:
    return f"ep{ep_id}-{'egress' if egress else 'ingress'}-{port}"


def http_listeners(
    endpoints: Iterable[EndpointView],
    ports: ProxyPorts,
    prefixes: Mapping[int, tuple[str, ...]],
) -> list[cfg.ProxyListener]:
    """The node's HTTP proxy listeners: per endpoint, direction and port with HTTP rules, one
    chain whose peers are the entries' identities (their addresses) with the entries' rules."""
    chains: dict[bool, list[cfg.HTTPChain]] = {False: [], True: []}
    for ep in sorted(endpoints, key=lambda e: e.id):
        if ep.policy is None or not ep.addresses:
            continue
        grouped: dict[tuple[bool, int], list[cfg.PeerHTTPRules]] = {}
        for key, l7 in sorted(ep.policy.l7.items(), key=lambda kv: _key_order(kv[0])):
            if l7.kind != "http" or key.protocol != PROTO_TCP or key.port_prefix != 16:
                continue
            if key.identity == 0:
                peers: tuple[str, ...] | None = None
            elif key.identity in WORLD_IDENTITIES:
                peers = WORLD_PREFIXES
            else:
                peers = prefixes.get(key.identity, ())
            rules = None if l7.wildcard else tuple(h for r in l7.rules for h in r.http)
            grouped.setdefault((key.egress, key.port), []).append(cfg.PeerHTTPRules(peers, rules))
        for (egress, port), peer_rules in sorted(grouped.items()):
            chains[egress].append(
                cfg.HTTPChain(
                    chain_name(ep.id, egress, port),
                    _DIRECTION[egress],
                    tuple(f"{a}/{128 if ':' in a else 32}" for a in ep.addresses),
                    port,
                    _merged(peer_rules),
                )
            )
    out = []
    for name, egress in ((HTTP_INGRESS, False), (HTTP_EGRESS, True)):
        proxy_port = ports.ports.get(name)
        if proxy_port is not None and chains[egress]:
            # upstream as the client (its address, the proxy mark), both directions: the
            # destination sees the real client, its replies come back to Envoy (lib/proxy.h)
            chained = tuple(chains[egress])
            direction = _DIRECTION[egress]
            mark = PROXY_MARK[direction]
            out.append(cfg.ProxyListener(name, proxy_port, direction, chained, mark))
    return out


def _merged(peers: list[cfg.PeerHTTPRules]) -> tuple[cfg.PeerHTTPRules, ...]:
    """Peers with the same rules as one entry (their addresses together; every peer wins)."""
    every: set[tuple[HTTPRule, ...] | None] = set()
    addresses: dict[tuple[HTTPRule, ...] | None, set[str]] = {}
    for peer in peers:
        found = addresses.setdefault(peer.rules, set())
        if peer.prefixes is None:
            every.add(peer.rules)
        else:
            found.update(peer.prefixes)
    return tuple(
        cfg.PeerHTTPRules(None if rules in every else tuple(sorted(found)), rules)
        for rules, found in addresses.items()
    )


def _log_access(batch: HTTPAccessBatch) -> None:
    """Without a consumer (Hubble takes them from the agent): the agent's debug log."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    for rec in batch.records():
        log.debug(
            "http %s ep%d %s %s %s -> %d %s (%.1f ms)", rec.direction, rec.endpoint_id,
            rec.method, rec.url, rec.protocol, rec.code, rec.verdict, rec.latency_ns / 1e6,
        )  # fmt: skip


def _key_order(key: MapKey) -> tuple[int, bool, int]:
    return (key.port, key.egress, key.identity)


class NodeEnvoy:
    """The agent's Envoy: started with the agent, configured from the endpoints' policies."""

    def __init__(
        self,
        node: str,
        root: Path,
        ports: ProxyPorts,
        endpoints: Callable[[], Iterable[EndpointView]],
        ipcache: Callable[[], Iterable[tuple[str, int]]],
        *,
        ipv6: bool = False,
        on_access: Callable[[HTTPAccessBatch], None] | None = None,
        access_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.paths = EnvoyPaths(root)
        self.ports = ports
        self._endpoints = endpoints
        self._ipcache = ipcache
        self.writer = EnvoyConfigWriter(self.paths, ipv6=ipv6)
        self.process = EnvoyProcess(node, self.paths)
        self.access_log = AccessLogReader(
            self.paths.access_log, on_access or _log_access, access_busy
        )
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.syncs = 0
        self.listener_ports: set[int] = set()
        """The ports of the HTTP listeners last written."""
        self.on_configured: list[Callable[[], None]] = []
        """Called on the loop after each configuration pass (files written, Envoy started):
        Envoy's listeners of ``listener_ports`` follow (agent.proxysockets)."""

    @property
    def enabled(self) -> bool:
        return HTTP_INGRESS in self.ports.ports or HTTP_EGRESS in self.ports.ports

    async def start(self) -> None:
        """Follow the endpoints' policies from now on: the configuration of those known now;
        the process once some endpoint has an HTTP rule (Envoy costs ~70 MB and a core's
        half second; most nodes never need it)."""
        self._running = True
        self._loop = asyncio.get_running_loop()
        try:
            await self._reconcile()
        except Exception:  # the agent runs on: redirected traffic is dropped (fail closed)
            log.exception("envoy: not started (retried at the next policy change)")

    async def _stop_following(self) -> None:
        self._running = False
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending

    async def stop(self) -> None:
        """Stop following and end Envoy (its proxied connections close)."""
        await self._stop_following()
        if self.process.pid is not None:
            await self.process.stop()
        self.access_log.stop()

    async def detach(self) -> None:
        """The agent's exit: stop following, leave Envoy running with its configuration for
        the next agent (which adopts it: the connections it proxies go on)."""
        await self._stop_following()
        await self.process.detach()
        self.access_log.stop()

    def sync(self) -> int:
        """Recompute and write the node's proxy configuration; returns how many listeners it
        has (only files that changed are written)."""
        views = list(self._endpoints())
        # the ipcache (a map dump) only when some endpoint has HTTP rules: most nodes have none
        wanted = any(
            l7.kind == "http" for v in views if v.policy is not None for l7 in v.policy.l7.values()
        )
        prefixes = identity_prefixes(self._ipcache()) if wanted else {}
        listeners = http_listeners(views, self.ports, prefixes)
        self.listener_ports = {proxy.port for proxy in listeners}
        clusters = [cfg.cluster(d, PROXY_MARK[d]) for d in ("ingress", "egress")]
        if self.writer.apply(listeners, clusters):
            log.info("envoy: configuration written (%d HTTP listener(s))", len(listeners))
        self.syncs += 1
        return len(listeners)

    async def _reconcile(self) -> None:
        # an earlier agent's Envoy is taken over even when no HTTP rule applies any more (the
        # files just written then leave it no listener)
        wanted = self.sync() > 0 or self.process.recorded()
        if wanted and self.process.pid is None:
            self.access_log.start()  # before Envoy opens it (its open must not wait)
            await self.process.start()  # adopts a running one, or reads the files written
        for fn in self.on_configured:
            fn()

    def changed(self) -> None:
        """Something the configuration depends on changed: sync soon (once for a burst).
        Safe from any thread (the work happens on the agent's loop)."""
        if self._running and self._loop is not None:
            self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        self._dirty = True
        if self._running and (self._pending is None or self._pending.done()):
            self._pending = asyncio.get_running_loop().create_task(
                self._sync_soon(), name="envoy-sync"
            )

    async def _sync_soon(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(0)  # let the rest of a burst of changes arrive
            try:
                await self._reconcile()
            except Exception:
                log.exception("envoy: configuration not applied")
