"""Two agents (threads) allocating from the same pools at once through one datastore with the
API server's resourceVersion/409 contract (``MemoryDatastore``; the same scenario against a real
API server is tests/integration/agent/test_ipam_kube.py).

Phase 1 races both nodes for blocks: no address is handed out twice and every block is affine to
exactly the node whose allocations it holds. Phase 2 has node A ask for more than is left while B
takes one: A fills its blocks, claims the free ones, then borrows B's free addresses
(strictAffinity false) or stops at its own blocks (strictAffinity true).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from ciliary.agent.ipam import IPAMError, PoolsIPAM
from ciliary.agent.ipam.datastore import IPAMDatastore, MemoryDatastore
from ciliary.core.models import IPAMAllocateRequest

# 8 blocks of 8 addresses per family; each node's router claims one block
V4, V6 = "10.0.0.0/26", "fd00::/122"
BLOCK_V4, BLOCK_V6 = 29, 125
PHASE1 = 20  # per node: 21 addresses with the router, 3 blocks each, no borrowing needed


def _agent(store: IPAMDatastore, node: str, phases: list[int], barrier: Any, out: Any) -> None:
    """One agent: allocate ``phases[i]`` dual-stack owners after each barrier; report."""
    try:
        ipam = PoolsIPAM(node, {"kubernetes.io/hostname": node}, store)
        results: list[list[tuple[str, int, str, str | None]]] = []
        errors: list[list[str]] = []
        for phase, count in enumerate(phases):
            barrier.wait(timeout=30)
            got: list[tuple[str, int, str, str | None]] = []
            failed: list[str] = []
            for i in range(count):
                owner = f"{node}-p{phase}-{i}/eth0"
                try:
                    allocs = ipam.allocate(IPAMAllocateRequest(owner=owner, kind="endpoint"))
                except IPAMError as err:
                    failed.append(f"{err.kind}: {err}")
                    continue
                got.extend((a.owner, a.family, a.address, a.block) for a in allocs)
            results.append(got)
            errors.append(failed)
        out.put((node, str(ipam.router_v4), str(ipam.router_v6), results, errors))
    except BaseException as err:  # reported to the test, which fails with it
        out.put((node, "crash", repr(err), [], []))


def seed(put_pool: Any, put_config: Any, strict: bool) -> None:
    """The scenario's pools and configuration, through ``put_pool``/``put_config``."""
    for name, cidr, size in (("v4", V4, BLOCK_V4), ("v6", V6, BLOCK_V6)):
        put_pool({"metadata": {"name": name}, "spec": {"cidr": cidr, "blockSize": size}})
    put_config({"metadata": {"name": "default"}, "spec": {"strictAffinity": strict}})


def run_agents(stores: dict[str, IPAMDatastore], phases: dict[str, list[int]]) -> dict[str, Any]:
    """Each node's agent in a thread of its own, on its own datastore (or a shared one)."""
    barrier = threading.Barrier(len(phases))
    out: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(target=_agent, args=(stores[node], node, counts, barrier, out))
        for node, counts in phases.items()
    ]
    for t in threads:
        t.start()
    reports: dict[str, Any] = {}
    for _ in threads:
        node, r4, r6, results, errors = out.get(timeout=120)
        assert r4 != "crash", f"agent {node} crashed: {r6}"
        reports[node] = {"routers": (r4, r6), "results": results, "errors": errors}
    for t in threads:
        t.join(timeout=30)
    return reports


def slots(blocks: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Address → (node, owner) of every allocation recorded in IPAMBlock objects."""
    out: dict[str, tuple[str, str]] = {}
    for block in blocks:
        spec = block["spec"]
        base = ip_network(spec["cidr"]).network_address
        for ordinal, index in enumerate(spec["allocations"]):
            if index is not None:
                attr = spec["attributes"][index]
                out[str(base + ordinal)] = (attr["secondary"]["node"], attr["handle_id"])
    return out


def check_two_agents(reports: dict[str, Any], blocks: list[dict[str, Any]], strict: bool) -> None:
    a, b = reports["a"], reports["b"]

    # phase 1: both got everything, dual stack, and no address twice
    for r in (a, b):
        assert r["errors"][0] == []
        assert len(r["results"][0]) == 2 * PHASE1
        by_owner = Counter(owner for owner, *_ in r["results"][0])
        assert set(by_owner.values()) == {2}
    everything = [addr for r in (a, b) for phase in r["results"] for _, _, addr, _ in phase] + [
        x for r in (a, b) for x in r["routers"]
    ]
    assert len(everything) == len(set(everything)), "an address was handed out twice"

    assert len(blocks) == 16  # every block of both pools is claimed in the end
    node_of_block = {blk["spec"]["cidr"]: blk["spec"]["affinity"] for blk in blocks}
    assert set(node_of_block.values()) == {"host:a", "host:b"}
    # the datastore agrees with what the agents were told, and records who allocated
    in_store = slots(blocks)
    assert len(in_store) == len(everything)
    for node, r in (("a", a), ("b", b)):
        for phase in r["results"]:
            for owner, _, addr, block in phase:
                assert in_store[addr] == (node, owner)
                assert block is not None and ip_address(addr) in ip_network(block)
    # phase 1 never borrowed: each allocation is in a block affine to its node
    for node, r in (("a", a), ("b", b)):
        for _, _, _, block in r["results"][0]:
            assert node_of_block[block] == f"host:{node}"

    # phase 2: b took one; a took the rest of its blocks, the free blocks and, unless strict,
    # b's free addresses; then ran out
    assert b["errors"][1] == [] and len(b["results"][1]) == 2
    borrowed = [x for x in a["results"][1] if node_of_block[x[3]] == "host:b"]
    granted = len(a["results"][1]) // 2
    assert len(a["errors"][1]) == 30 - granted
    assert all(
        e.startswith("exhausted: IP pool 'v4' (10.0.0.0/26) is exhausted") for e in a["errors"][1]
    )
    full = {
        blk["spec"]["cidr"]: sum(i is not None for i in blk["spec"]["allocations"]) == 8
        for blk in blocks
    }
    assert all(full[cidr] for cidr, node in node_of_block.items() if node == "host:a")
    if strict:
        assert borrowed == []
        assert not all(full.values()), "b's blocks keep free addresses a may not borrow"
        assert all("strictAffinity forbids borrowing" in e for e in a["errors"][1])
    else:
        assert borrowed, "a should have borrowed from b's blocks"
        assert all(full.values())
        assert granted == 64 - 2 - 2 * PHASE1 - 1  # everything that was left


@pytest.mark.parametrize("strict", [False, True], ids=["borrowing", "strict-affinity"])
def test_two_agents_share_pools(strict: bool) -> None:
    store = MemoryDatastore()
    seed(store.put_pool, store.put_config, strict)
    reports = run_agents({"a": store, "b": store}, {"a": [PHASE1, 30], "b": [PHASE1, 1]})
    check_two_agents(reports, store.blocks(), strict)
