"""Kubernetes API clients shared by every ciliary process that talks to an API server.

A layer of its own (beside ``policy``/``datapath``, above ``k8s``) so that the controllers and
the agent can both import it. ``ciliary.agent.k8s`` has its own client and informer (written at
the same time, with indexes and async handlers); they are to be moved here and this package's
``client``/``informer`` folded into them, so that one list + watch implementation remains.
"""
