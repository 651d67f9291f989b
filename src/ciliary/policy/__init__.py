"""Network policy: Cilium's and Kubernetes' policy documents, read, checked and normalized.

Users write policies the way they would for a cluster (``CiliumNetworkPolicy``,
``CiliumClusterwideNetworkPolicy``, ``networking.k8s.io/v1`` ``NetworkPolicy``) and expect them to
be understood exactly as Cilium understands them, or refused before anything changes. This package
is that understanding, as pure code: :mod:`ciliary.policy.api` reads the documents and turns them
into one frozen, normalized rule model (Kubernetes policies translated the way Cilium translates
them), which the policy engine resolves against endpoints and identities.

It sits above ``core`` and below ``agent``: no sockets, files, kernel or processes here, only text
in and values out (PyYAML is the one outside library it uses, to read YAML text).
"""
