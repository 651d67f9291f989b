"""The agent as a Kubernetes client: one generic REST client (``client``), list + watch informers
(``informer``) and Cilium's CRD-mode identity allocation (``identity``, ``identitygc``).

Everything here speaks JSON objects (``dict``) of the kinds in ``ciliary.k8s.resources``; typed
models (``ciliary.k8s.objects``) are applied by the consumers that need them, once.
"""
