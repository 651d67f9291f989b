"""Pod address management, in two modes behind one ``IPAM`` protocol.

``cluster-pool`` (Cilium's default): the node allocates from its own per-family CIDR, handed out
by the operator (the lab), with state in a node-local file. ``pools`` (Calico's model): nodes
allocate from cluster-wide IP pools through the cluster store, in blocks affine to nodes, with
borrowing when a pool runs low. Both persist an allocation before returning it, and both are
idempotent per owner so a retried CNI ADD gets the same addresses.
"""

from ciliary.agent.ipam.clusterpool import ClusterPoolIPAM
from ciliary.agent.ipam.pools import IPAMConfig, IPPool, PoolsIPAM, load_pools
from ciliary.agent.ipam.selector import Selector, parse_selector
from ciliary.agent.ipam.types import (
    IP_ADDRS_ANNOTATION,
    IPAM,
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    ROUTER_KIND,
    IPAMError,
    router_owner,
)

__all__ = [
    "IPAM",
    "IPV4_POOLS_ANNOTATION",
    "IPV6_POOLS_ANNOTATION",
    "IP_ADDRS_ANNOTATION",
    "ROUTER_KIND",
    "ClusterPoolIPAM",
    "IPAMConfig",
    "IPAMError",
    "IPPool",
    "PoolsIPAM",
    "Selector",
    "load_pools",
    "parse_selector",
    "router_owner",
]
