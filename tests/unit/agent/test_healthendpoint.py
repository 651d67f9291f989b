"""The health endpoint's names (its netns after the node's, so ``lab down``'s prefix removal
takes it), the endpoint manager's guard on reserved identities, and which policies select it.
The endpoint itself, across nodes: ``tests/e2e/test_lab_multinode.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent import healthendpoint
from ciliary.agent.endpoints import EndpointError, EndpointManager
from ciliary.agent.healthendpoint import HealthEndpoint, netns_name
from ciliary.agent.policymanager import PolicyManager
from ciliary.core.models import Endpoint, EndpointCreateRequest, EndpointState
from ciliary.policy.api import parse_policy_text
from tests.unit.policy.engine.lab import HEALTH, HOST, REMOTE_NODE, Lab


def test_netns_named_after_the_node_netns() -> None:
    assert netns_name("ciln-lab-n1", "n1") == "ciln-lab-n1-health"
    assert netns_name("/run/netns/ciln-lab-n1", "n1") == "ciln-lab-n1-health"
    assert netns_name(None, "n1") == "ciliary-n1-health"


def test_only_a_reserved_identity_can_be_given(tmp_path: Path) -> None:
    unused: Any = None
    manager = EndpointManager(state_dir=tmp_path, datapath=unused, ipam=unused, identities=unused)
    req = EndpointCreateRequest(container_id="cilium-health", netns="/run/netns/x")
    with pytest.raises(EndpointError, match="no reserved identity 300"):
        asyncio.run(manager.create(req, reserved_identity=300))
    assert manager.endpoints() == []


DENY_ALL_IN_DEFAULT = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  endpointSelector: {}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"""

CLUSTERWIDE = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: everything}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
"""


def test_namespaced_default_deny_leaves_the_health_endpoint_open() -> None:
    """No namespaced policy selects reserved:health (its selectors carry their namespace), so
    the health endpoint stays in default-allow whatever the pods' policies; as upstream, a
    clusterwide empty selector and ``always`` do select it (the cluster entity admits probes)."""
    lab = Lab(HEALTH, REMOTE_NODE, HOST)
    lab.apply(DENY_ALL_IN_DEFAULT)
    pol = lab.policy(HEALTH)
    assert not pol.ingress_enforced and not pol.egress_enforced
    lab.apply(CLUSTERWIDE)
    assert lab.policy(HEALTH).ingress_enforced
    assert lab.ingress(HEALTH, REMOTE_NODE, port=4240).allowed
    assert Lab(HEALTH, mode="always").policy(HEALTH).ingress_enforced


ONLY_HEALTH = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: health-from-nodes}
spec:
  endpointSelector: {matchLabels: {reserved:health: ""}}
  ingress: [{fromEntities: [remote-node, host]}]
"""


def test_the_agent_selects_the_health_endpoint_by_reserved_health() -> None:
    """The agent's policy manager gives the health endpoint (identity 4, which no allocator
    knows) its reserved labels, so a rule naming reserved:health selects it."""
    unused: Any = None
    manager = PolicyManager(
        datapath=unused, identity_labels=lambda _n: None, all_identities=lambda: []
    )
    manager.upsert_policies(parse_policy_text(ONLY_HEALTH, "health.yaml"))
    ep = Endpoint(
        id=1, container_id="cilium-health", pod_name="", namespace="", labels={}, identity=4,
        state=EndpointState.READY, ipv4=None, ipv6=None, ifname="eth0", netns="/x", lxc="lxc1",
        lxc_ifindex=0, mac="", node_mac="", created_at=0.0, reserved_identity=4,
    )  # fmt: skip
    pol = manager.compute(ep)
    assert pol.ingress_enforced and not pol.egress_enforced


class _FailingEndpoints:
    """An endpoint manager whose create fails (an exhausted pool, a netlink refusal)."""

    def by_container(self, _container_id: str, _ifname: str | None = None) -> None:
        return None

    async def create(self, _req: EndpointCreateRequest, **_kw: object) -> Any:
        raise EndpointError("no free address in 10.0.1.0/30", 409, "exhausted")


def test_a_health_endpoint_that_cannot_be_made_leaves_no_netns_and_the_agent_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []

    def remove(name: str) -> bool:
        if name not in made:
            return False
        made.remove(name)
        return True

    monkeypatch.setattr(healthendpoint.netns, "create", made.append)
    monkeypatch.setattr(healthendpoint.netns, "remove", remove)
    unused: Any = _FailingEndpoints()
    health = HealthEndpoint(unused, "ciln-l-n1-health", 4240)
    assert asyncio.run(health.ensure()) is None
    assert made == []  # made, then removed again
