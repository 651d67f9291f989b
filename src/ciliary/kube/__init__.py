"""The Kubernetes API client shared by every ciliary process that talks to an API server.

One client (``client``: ``KubeClient``, ``ApiError``), one list + watch informer (``informer``).
A layer of its own (beside ``policy``/``datapath``, above ``k8s``) so that the agent, the
controller manager and the operator all import the same code: a second informer would be a
second, subtly different answer to resumes, relists and deletions missed while disconnected.
"""
