"""The cluster store: what the Kubernetes API (and Cilium's kvstore) is to a cluster.

Resources (nodes, namespaces, pods, IP pools, IPAM blocks, …) are JSON documents shared by every
agent of a lab and the lab itself. This backend is a directory with one file per resource and an
exclusive ``flock`` for transactions, which is enough for agents on one machine; a later etcd
backend keeps the same interface.
"""

from ciliary.kvstore.filestore import FileStore, StoreError, Transaction

__all__ = ["FileStore", "StoreError", "Transaction"]
