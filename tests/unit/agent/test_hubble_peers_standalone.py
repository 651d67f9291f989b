"""A standalone agent (no Kubernetes API) is its own only Hubble peer: ``peer.Peer`` lists the
node's unix socket, plaintext, and nothing else (with an API the CiliumNodes are the list:
``tests/integration/agent/test_hubble_peers.py``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ciliary.agent.config import AgentConfig, HubbleConfig
from ciliary.agent.hubble import AgentHubble
from ciliary.hubble.peer import PeerInfo


def test_standalone_agent_is_its_only_peer(tmp_path: Path) -> None:
    cfg = AgentConfig(
        node="n1",
        state_dir=tmp_path,
        pin_dir=tmp_path / "pins",
        socket=tmp_path / "agent.sock",
        bpf_object=tmp_path / "bpf.o",
        ipv4_range=None,
        ipv6_range=None,
    )
    monitor = SimpleNamespace(ifname=None, why_default_deny=None)  # read only by flows
    endpoints = SimpleNamespace(counts_by_state=dict)
    agent = SimpleNamespace(
        cfg=cfg, kube=None, policy=None, monitor=monitor, endpoints=endpoints, l7_stats=dict
    )
    hubble = AgentHubble(agent, HubbleConfig())  # type: ignore[arg-type]
    assert hubble.list_peers() == [PeerInfo("n1", f"unix://{tmp_path / 'hubble.sock'}", None)]
