"""The health endpoint's names (its netns after the node's, so ``lab down``'s prefix removal
takes it) and the endpoint manager's guard on reserved identities. The endpoint itself, across
nodes: ``tests/e2e/test_lab_multinode.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent.endpoints import EndpointError, EndpointManager
from ciliary.agent.healthendpoint import netns_name
from ciliary.core.models import EndpointCreateRequest


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
