"""Cilium's well-known numbers that both sides of a boundary need: the agent binds or dials
them, the lab passes or expects them. One home, so a lab and its agents never disagree."""

from __future__ import annotations

TUNNEL_PORT = 8472
"""Cilium's VXLAN port (its ``--tunnel-port`` / Helm ``tunnelPort`` default; the Linux driver's
default, not IANA's 4789)."""
CLUSTER_HEALTH_PORT = 4240
"""cilium-agent's ``--cluster-health-port`` default: the /hello responder every node probes."""
ENVOY_STATE = "envoy"
"""The node's Envoy's directory under its agent's state directory (bootstrap, xDS files, log,
access log pipe, admin socket and ``ENVOY_PIDFILE``)."""
ENVOY_PIDFILE = "envoy.pid"
"""In ``ENVOY_STATE``: the node's Envoy's pid and start time (JSON). Envoy outlives an agent's
restart (its proxied connections go on; the next agent adopts it), so whoever removes the node
(the lab's teardown, a test's fixture) stops it by this file (``processes.stop_recorded``)."""
