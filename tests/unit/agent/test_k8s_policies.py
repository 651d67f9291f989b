"""The agent's policy informers' handlers: objects as the API server sends them (server metadata,
status) reach the repository; an object the parser refuses never does (an update keeps the last
valid version), and a deletion removes the policy; every change asks for one regeneration."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ciliary.agent.k8s.policies import CNP, KNP, PolicyWatcher
from ciliary.agent.policymanager import PolicyManager
from ciliary.kvstore import FileStore
from tests.unit.policy.test_policymanager import LABELS, _Datapath


def cnp(port: str, rv: str = "5") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": rv,
            "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": port}]}]}],
        },
        "status": {"nodes": {}},
    }  # fmt: skip


def setup(tmp_path: Path) -> tuple[PolicyManager, PolicyWatcher, list[str]]:
    pm = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        store=FileStore(tmp_path / "store"),
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    reasons: list[str] = []

    async def regenerate(reason: str) -> None:
        reasons.append(reason)

    return pm, PolicyWatcher(None, pm, regenerate), reasons  # type: ignore[arg-type]


def ports(pm: PolicyManager) -> list[int]:
    pol = pm.repo.get("CiliumNetworkPolicy/shop/web")
    assert pol is not None
    return [p.port for r in pol.rules for i in r.ingress for pr in i.ports for p in pr.ports]


def test_api_objects_reach_the_repository_and_invalid_ones_never(tmp_path: Path) -> None:
    pm, watcher, reasons = setup(tmp_path)
    asyncio.run(watcher._upsert(CNP, cnp("99999")))
    assert pm.repo.get("CiliumNetworkPolicy/shop/web") is None and reasons == []
    asyncio.run(watcher._upsert(CNP, cnp("80")))
    assert ports(pm) == [80] and len(reasons) == 1
    asyncio.run(watcher._upsert(CNP, cnp("99999", rv="6")))  # the last valid version stays
    assert ports(pm) == [80] and len(reasons) == 1
    asyncio.run(watcher._upsert(CNP, cnp("443", rv="7")))
    assert ports(pm) == [443] and len(reasons) == 2
    asyncio.run(watcher._remove(KNP, cnp("443")))  # another kind's object of that name
    assert ports(pm) == [443] and len(reasons) == 2
    asyncio.run(watcher._remove(CNP, cnp("443")))
    assert pm.repo.get("CiliumNetworkPolicy/shop/web") is None and len(reasons) == 3
