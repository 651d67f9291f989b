"""The agent as a Kubernetes client: Cilium's CRD-mode identity allocation (``identity``).

The client and informers it stands on are ``ciliary.kube``'s (shared with the controller manager
and the operator); the operator's side of identities (their garbage collection) is
``ciliary.controllers.identitygc``. Everything here speaks JSON objects (``dict``) of the kinds
in ``ciliary.k8s.resources``; typed models (``ciliary.k8s.objects``) are applied by the
consumers that need them, once.
"""
