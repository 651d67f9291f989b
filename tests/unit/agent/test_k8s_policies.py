"""The agent's policy informers' handlers: objects as the API server sends them (server metadata,
status) reach the repository; an object the parser refuses never does (an update keeps the last
valid version), and a deletion removes the policy; every change asks for one regeneration."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ciliary.agent.k8s.policies import CNP, KNP, PolicyWatcher
from ciliary.agent.policymanager import PolicyManager
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
        saved=None,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    reasons: list[str] = []

    async def regenerate(reason: str) -> None:
        reasons.append(reason)

    return pm, PolicyWatcher(None, pm, regenerate, node="n1"), reasons  # type: ignore[arg-type]


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


def entry(watcher: PolicyWatcher, plural: str = CNP.plural) -> dict[str, Any]:
    """This node's status entry the watcher wants written for shop/web."""
    patch = watcher.status_writer.pending((plural, "shop", "web"))
    assert patch is not None
    node_entry: dict[str, Any] = patch["status"]["nodes"]["n1"]
    assert set(patch["status"]["nodes"]) == {"n1"}  # only its own node's key
    return node_entry


def test_node_status_says_what_this_node_did(tmp_path: Path) -> None:
    pm, watcher, reasons = setup(tmp_path)
    bad = cnp("99999")
    bad["metadata"]["annotations"] = {"owner": "shop-team"}
    asyncio.run(watcher._upsert(CNP, bad))
    got = entry(watcher)
    assert got["ok"] is False and got["enforcing"] is False
    assert "99999" in got["error"] and got["localPolicyRevision"] is None
    assert got["annotations"] == {"owner": "shop-team"} and got["lastUpdated"].endswith("Z")

    good = cnp("80", rv="6")
    good["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "team": "shop",
    }
    good["status"] = {"nodes": {"n1": got, "n2": {"ok": True}}}  # as stored after the write
    asyncio.run(watcher._upsert(CNP, good))
    got = entry(watcher)
    assert got["ok"] is True and got["enforcing"] is True
    assert got["localPolicyRevision"] == pm.repo.revision
    # fields of the previous entry are removed (null in a merge patch), other nodes untouched
    assert got["error"] is None
    assert got["annotations"] == {"owner": None, "team": "shop"}

    # our own status write comes back as an update: not applied again, nothing more written
    watcher.status_writer.forget((CNP.plural, "shop", "web"))
    written = cnp("80", rv="7")
    written["metadata"]["annotations"] = good["metadata"]["annotations"]
    written["status"] = {"nodes": {"n1": {"ok": True}}}
    asyncio.run(watcher._upsert(CNP, written))
    assert len(reasons) == 1 and watcher.status_writer.pending((CNP.plural, "shop", "web")) is None

    # no annotations left: the field goes (null)
    asyncio.run(watcher._upsert(CNP, cnp("443", rv="8")))
    assert entry(watcher)["annotations"] is None and len(reasons) == 2

    # Kubernetes NetworkPolicies get no node status (upstream writes none)
    knp = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "9"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }  # fmt: skip
    asyncio.run(watcher._upsert(KNP, knp))
    assert watcher.status_writer.pending((KNP.plural, "shop", "web")) is None
    # a deleted policy's unwritten status is dropped
    asyncio.run(watcher._remove(CNP, cnp("443", rv="10")))
    assert watcher.status_writer.pending((CNP.plural, "shop", "web")) is None
