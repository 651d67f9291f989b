"""Pod address management, in two modes behind one ``IPAM`` protocol.

``cluster-pool`` (Cilium's default): the node allocates from its own per-family CIDR, handed out
by the operator (the lab), with state in a node-local file. ``pools`` (Calico's model): nodes
allocate from cluster-wide IP pools of the Kubernetes API, in blocks (API objects written with
optimistic concurrency) affine to nodes, with borrowing when a pool runs low. Both persist an
allocation before returning it, and both are idempotent per owner so a retried CNI ADD gets the
same addresses.
"""

from ciliary.agent.ipam.clusterpool import ClusterPoolIPAM
from ciliary.agent.ipam.pools import (
    PoolsIPAM,
    ipam_config_from_document,
    load_pools,
    pool_from_document,
)
from ciliary.agent.ipam.types import (
    IPAM,
    ROUTER_KIND,
    IPAMError,
    router_owner,
)

__all__ = [
    "IPAM",
    "ROUTER_KIND",
    "ClusterPoolIPAM",
    "IPAMError",
    "PoolsIPAM",
    "ipam_config_from_document",
    "load_pools",
    "pool_from_document",
    "router_owner",
]
