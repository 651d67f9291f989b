"""Cilium's well-known numbers that both sides of a boundary need: the agent binds or dials
them, the lab passes or expects them. One home, so a lab and its agents never disagree."""

from __future__ import annotations

TUNNEL_PORT = 8472
"""Cilium's VXLAN port (its ``--tunnel-port`` / Helm ``tunnelPort`` default; the Linux driver's
default, not IANA's 4789)."""
CLUSTER_HEALTH_PORT = 4240
"""cilium-agent's ``--cluster-health-port`` default: the /hello responder every node probes."""
