"""Talking to a node's agent over its unix socket, and nothing else.

Every front end (the CLI, the CNI plugin, the lab) reaches the agent only through this package so
that there is one place that knows where sockets live, how a dead agent looks (a missing socket,
a refused connection, a timeout) and how the agent's error bodies become exceptions. It depends
only on ``ciliary.core.models``, the shared vocabulary of the API, never on the agent's code.
"""

from __future__ import annotations

from ciliary.client.agent import (
    AgentAPIError,
    AgentClient,
    AgentClientError,
    AgentDiscoveryError,
    AgentPermissionError,
    AgentProtocolError,
    AgentUnavailableError,
    agent_socket_path,
    resolve_agent_socket,
    run_dir,
)

__all__ = [
    "AgentAPIError",
    "AgentClient",
    "AgentClientError",
    "AgentDiscoveryError",
    "AgentPermissionError",
    "AgentProtocolError",
    "AgentUnavailableError",
    "agent_socket_path",
    "resolve_agent_socket",
    "run_dir",
]
