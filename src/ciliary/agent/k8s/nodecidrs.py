"""The agent's half of cluster-pool IPAM v2: its CiliumNode, and the pod CIDRs the operator
writes into it.

With a Kubernetes API and no ``--ipv4-range``/``--ipv6-range``, an agent in cluster-pool mode
does what cilium-agent does: it makes sure its CiliumNode exists (created with no pod CIDRs; an
existing one keeps what it names, so a restarted agent gets the same CIDRs back) and waits,
watching that one object, until ``spec.ipam.podCIDRs`` is set, by ``ciliary-operator``'s
allocator (``controllers.nodeipam``) or by whoever pre-created the node. Until then the agent
does not open its API: a CNI ADD fails closed (the plugin's "agent not running, try again
later") and the log says every few seconds what the agent waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from ciliary.agent.config import AgentConfig
from ciliary.agent.k8s.ciliumendpoints import CILIUM_NODES, cilium_node
from ciliary.kube.client import ApiError, KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

LOG_EVERY = 5.0


def pod_cidrs(obj: KubeObject | None) -> list[str]:
    if obj is None:
        return []
    return list(((obj.get("spec") or {}).get("ipam") or {}).get("podCIDRs") or [])


async def wait_for_pod_cidrs(
    client: KubeClient, node: str, labels: Mapping[str, str], *, log_every: float = LOG_EVERY
) -> list[str]:
    """The node's pod CIDRs once its CiliumNode names some (creating the node when absent)."""
    try:
        await client.create(CILIUM_NODES, cilium_node(node, [], [], dict(labels)))
        log.info("created CiliumNode %s without pod CIDRs (the operator allocates them)", node)
    except ApiError as err:
        if not err.already_exists:
            raise
    informer = Informer(
        client, CILIUM_NODES, field_selector=f"metadata.name={node}", name="own-ciliumnode"
    )
    changed = asyncio.Event()
    informer.add_handler(
        HandlerFuncs(add=lambda _o: changed.set(), update=lambda _o, _n: changed.set())
    )
    informer.start()
    try:
        await informer.wait_synced()
        while True:
            changed.clear()  # before the read: a change after it wakes the wait below
            cidrs = pod_cidrs(informer.store.get(node))
            if cidrs:
                log.info("CiliumNode %s: pod CIDRs %s", node, ", ".join(cidrs))
                return cidrs
            log.warning(
                "waiting for the operator to allocate spec.ipam.podCIDRs of CiliumNode %s"
                " (cluster-pool IPAM): no pod gets an address until then",
                node,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), log_every)
    finally:
        await informer.stop()


def wait_for_pod_cidrs_blocking(
    kubeconfig: Path | None, node: str, labels: Mapping[str, str]
) -> list[str]:
    """``wait_for_pod_cidrs`` with a client of its own, for the agent's synchronous start-up
    (it runs before the agent's event loop; an event loop of its own in this thread)."""

    async def body() -> list[str]:
        client = await KubeClient.connect(kubeconfig)
        try:
            return await wait_for_pod_cidrs(client, node, labels)
        finally:
            await client.close()
            await asyncio.sleep(0.25)  # closed TLS transports finish closing before the loop ends

    return asyncio.run(body())


def with_allocated_ranges(cfg: AgentConfig) -> AgentConfig:
    """``cfg`` with the node's pod CIDRs as its ranges when the operator allocates them
    (cluster-pool v2: no ``--ipv4-range``/``--ipv6-range``; the agent's main checked there is an
    API), once allocated (``wait_for_pod_cidrs_blocking``); else ``cfg`` itself."""
    if cfg.ipam_mode != "cluster-pool" or cfg.ipv4_range is not None or cfg.ipv6_range is not None:
        return cfg
    cidrs = wait_for_pod_cidrs_blocking(cfg.kubeconfig, cfg.node, cfg.node_labels)
    v4, v6 = by_family(cfg.node, cidrs)
    return dataclasses.replace(cfg, ipv4_range=v4, ipv6_range=v6)


def by_family(node: str, cidrs: list[str]) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The IPv4 and IPv6 pod CIDR of a CiliumNode's ``spec.ipam.podCIDRs`` (the first of each
    family, as cilium-agent uses); ``ValueError`` naming the node for an entry not a CIDR."""
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in cidrs:
        try:
            net = ip_network(text)
        except ValueError as err:
            raise ValueError(f"CiliumNode {node}: spec.ipam.podCIDRs has {text!r}: {err}") from err
        if isinstance(net, IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6
