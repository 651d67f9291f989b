"""The lab: a Kubernetes-like cluster on one machine, described by a YAML file.

Nodes are network namespaces and pods are network namespaces plugged into their node, so that
ciliary's datapath, policy and observability can be exercised end to end without a real cluster.
``ciliary.lab.schema`` reads and checks the lab file; the rest of the package builds the lab.
"""
