"""Two agents (processes) allocating from the same pools at once through one FileStore.

Phase 1 races both nodes for blocks: no address is handed out twice and every block is affine to
exactly the node whose allocations it holds. Phase 2 has node A ask for more than is left while B
takes one: A fills its blocks, claims the free ones, then borrows B's free addresses
(strictAffinity false) or stops at its own blocks (strictAffinity true).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent.ipam import IPAMError, PoolsIPAM
from ciliary.core.models import IPAMAllocateRequest
from ciliary.kvstore import FileStore

# 8 blocks of 8 addresses per family; each node's router claims one block
V4, V6 = "10.0.0.0/26", "fd00::/122"
BLOCK_V4, BLOCK_V6 = 29, 125
PHASE1 = 20  # per node: 21 addresses with the router, 3 blocks each, no borrowing needed


def _agent(root: str, node: str, phases: list[int], barrier: Any, out: Any) -> None:
    """One agent: allocate ``phases[i]`` dual-stack owners after each barrier; report."""
    try:
        ipam = PoolsIPAM(node, {"kubernetes.io/hostname": node}, FileStore(Path(root)))
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
        raise


def _run(
    tmp_path: Path, strict: bool, phases: dict[str, list[int]]
) -> tuple[dict[str, Any], FileStore]:
    root = tmp_path / "store"
    store = FileStore(root)
    store.put("ippools", "v4", {"spec": {"cidr": V4, "blockSize": BLOCK_V4}})
    store.put("ippools", "v6", {"spec": {"cidr": V6, "blockSize": BLOCK_V6}})
    store.put("ipamconfigs", "default", {"spec": {"strictAffinity": strict}})
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(phases))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_agent, args=(str(root), node, counts, barrier, out))
        for node, counts in phases.items()
    ]
    for p in procs:
        p.start()
    reports: dict[str, Any] = {}
    for _ in procs:
        node, r4, r6, results, errors = out.get(timeout=60)
        assert r4 != "crash", f"agent {node} crashed: {r6}"
        reports[node] = {"routers": (r4, r6), "results": results, "errors": errors}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return reports, store


def _blocks(store: FileStore) -> dict[str, dict[str, Any]]:
    return store.list("ipamblocks")


@pytest.mark.parametrize("strict", [False, True], ids=["borrowing", "strict-affinity"])
def test_two_agents_share_pools(tmp_path: Path, strict: bool) -> None:
    reports, store = _run(tmp_path, strict, {"a": [PHASE1, 30], "b": [PHASE1, 1]})
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

    blocks = _blocks(store)
    assert len(blocks) == 16  # every block of both pools is claimed in the end
    node_of_block = {name: doc["affinity"] for name, doc in blocks.items()}
    assert set(node_of_block.values()) == {"host:a", "host:b"}
    # the store agrees with what the agents were told, and records who allocated
    in_store = {
        addr: (slot["node"], slot["owner"])
        for doc in blocks.values()
        for addr, slot in doc["allocations"].items()
    }
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
    full = {name: len(doc["allocations"]) == 8 for name, doc in blocks.items()}
    assert all(full[name] for name, node in node_of_block.items() if node == "host:a")
    if strict:
        assert borrowed == []
        assert not all(full.values()), "b's blocks keep free addresses a may not borrow"
        assert all("strictAffinity forbids borrowing" in e for e in a["errors"][1])
    else:
        assert borrowed, "a should have borrowed from b's blocks"
        assert all(full.values())
        assert granted == 64 - 2 - 2 * PHASE1 - 1  # everything that was left
