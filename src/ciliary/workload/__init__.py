"""Tiny built-in workloads that run inside lab pods: servers, clients, ping and pause.

The lab has no container images, so a pod's command is one of these (``ciliary workload ...``).
They exist to produce and check traffic through the datapath: every server logs one line per
request or connection, every client prints what it got and exits 0 or 1 with a one-line reason,
and everything has a timeout. They run in a pod's network namespace with only the standard
library (and ``ciliary.core``), never the agent or the datapath, like a real pod's processes.
"""
