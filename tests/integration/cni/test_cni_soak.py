"""Soak: CNI ADD/DEL cycles (66 in CI; CILIARY_SOAK_CYCLES=500 or more for a long soak) with
the agent kill -9'ed in the middle of an ADD and between operations, the plugin itself killed
mid-ADD, and the netns gone before a DEL. The runtime behaves as kubelet does: a failed ADD is
followed by DEL, a DEL answered "try again later" (11) is retried. Afterwards nothing may have
leaked — addresses, lxc devices, endpoints, endpoint records, netns — and the pods that lived
through it all are still reachable.

The kill points are a schedule, not a dice roll, so that a short run hits every one of them: one
cycle in CHAOS_EVERY is a chaos cycle, the chaos kinds take turns (CHAOS_TURNS), and the delay
before a mid-ADD kill walks through DELAY_BINS equal slices of 0-350 ms (jittered inside its
slice by the seed): an ADD takes some 50-80 ms, so the first slices cut it in its phases (plugin
start, IPAM, datapath, reply) and the later ones come just after it, with both kinds of kill.
The schedule test fails when CILIARY_SOAK_CYCLES is too small for that. The CI run is the
shortest that does: every mid-ADD kill slice of both kinds once (10 + 10 kills) and two kills
between operations, with two plain cycles after each kill (each agent kill costs a restart, the
bulk of the run's time; the kills between operations are all alike, so two of them).

The seed (jitter, pods kept alive, which pod is deleted) is printed; rerun a failure with
CILIARY_SOAK_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CNI_TIMEOUT,
    VENV_BIN,
    NodeAgent,
    Pods,
    in_netns,
    netns_del,
    node_agent,
    run_plugin,
)

CI_CYCLES = 66
CYCLES = int(os.environ.get("CILIARY_SOAK_CYCLES", str(CI_CYCLES)))
CHAOS_EVERY = 3
"""One cycle in this many is a chaos cycle (the others are a plain ADD)."""
CHAOS_TURNS = ("agent-mid-add", "plugin-mid-add") * 4 + ("agent",)
"""The chaos kinds in turn: kill -9 of the agent or of the plugin during an ADD, of the agent
between operations."""
MAX_DELAY = 0.35
DELAY_BINS = 10
"""Mid-ADD kills come after a delay in slice k % DELAY_BINS of [0, MAX_DELAY) at their k-th turn."""
NETNS_LOST_EVERY = 5
"""Every this-many-th DEL finds its netns already gone (the runtime lost it before DEL)."""


def chaos_schedule(cycles: int) -> list[tuple[int, str, int]]:
    """(cycle, kind, delay slice) of every chaos cycle of a run of ``cycles``."""
    out: list[tuple[int, str, int]] = []
    turns: dict[str, int] = {}
    for cycle in range(0, cycles, CHAOS_EVERY):
        kind = CHAOS_TURNS[(cycle // CHAOS_EVERY) % len(CHAOS_TURNS)]
        turn = turns.get(kind, 0)
        turns[kind] = turn + 1
        out.append((cycle, kind, turn % DELAY_BINS))
    return out


def test_a_ci_run_of_the_schedule_hits_every_kill_point() -> None:
    """Every kind of kill, and every delay slice of both mid-ADD kills, is in the schedule of a
    CI run (and of whatever CILIARY_SOAK_CYCLES asks for)."""
    for cycles in {CI_CYCLES, CYCLES}:
        schedule = chaos_schedule(cycles)
        assert {kind for _c, kind, _b in schedule} == set(CHAOS_TURNS), cycles
        for kind in ("agent-mid-add", "plugin-mid-add"):
            slices = {b for _c, k, b in schedule if k == kind}
            assert slices == set(range(DELAY_BINS)), f"{cycles} cycles: {kind} slices {slices}"


def _env(command: str, cid: str, netns: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "CILIARY_"))}
    env.update(
        CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME="eth0",
        CNI_PATH=f"{VENV_BIN}:/usr/lib/cni",
    )  # fmt: skip
    return env


def _kill9_agent(agent: NodeAgent) -> None:
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait(timeout=10)
    agent.proc = None
    if agent._log_file is not None:
        agent._log_file.close()
        agent._log_file = None


class Runtime:
    """What kubelet + containerd do around the plugin, including their retry rules."""

    def __init__(self, agent: NodeAgent, conf: dict[str, Any]) -> None:
        self.agent = agent
        self.conf = conf
        self.restarts = 0

    def ensure_agent(self) -> None:
        if self.agent.proc is None:
            self.agent.start()
            self.restarts += 1

    def delete(self, cid: str, netns: str) -> None:
        """DEL until it succeeds, restarting the agent when it is down (as the DaemonSet would)."""
        for _ in range(5):
            run = run_plugin("DEL", self.conf, container_id=cid, netns=netns)
            if run.rc == 0:
                return
            assert run.json["code"] == 11, str(run)
            self.ensure_agent()
        raise AssertionError(f"DEL of {cid} never succeeded")

    def add(self, cid: str, netns: str) -> bool:
        run = run_plugin("ADD", self.conf, container_id=cid, netns=netns)
        if run.rc == 0:
            return True
        assert run.json["code"] in (11, 100), str(run)
        self.delete(cid, netns)  # a failed ADD is always followed by DEL
        return False

    def add_with_chaos(self, cid: str, netns: str, delay: float, victim: str) -> bool:
        """Start ADD, then kill -9 the plugin or the agent after ``delay`` seconds."""
        conf_file = self.agent.log.parent / f"{cid}.conf"
        conf_file.write_text(json.dumps(self.conf))
        with open(conf_file) as stdin:
            proc = subprocess.Popen(
                [str(VENV_BIN / "ciliary-cni")], stdin=stdin, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=_env("ADD", cid, netns),
            )  # fmt: skip
        time.sleep(delay)
        if victim == "plugin":
            proc.kill()
        else:
            _kill9_agent(self.agent)
        proc.wait(timeout=CNI_TIMEOUT)
        if victim == "agent":
            self.ensure_agent()
        if proc.returncode == 0:
            return True
        self.delete(cid, netns)
        return False


@pytest.mark.slow
def test_soak_add_del_with_kills(tmp_path: Path) -> None:
    seed = int(os.environ.get("CILIARY_SOAK_SEED", secrets.randbits(32)))
    print(f"soak seed {seed}")
    rng = random.Random(seed)
    pods = Pods()
    with node_agent(tmp_path, "10.231.0.0/22", "fd00:10:231::/118") as agent:
        conf = {"cniVersion": "1.0.0", "name": "soak", "type": "ciliary-cni", "node": agent.node}
        rt = Runtime(agent, conf)
        try:
            survivors = []
            for _ in range(3):
                name, path = pods.new()
                assert rt.add(f"survivor-{name}", path)
                survivors.append((f"survivor-{name}", name, path))
            live: dict[str, tuple[str, str]] = {}
            stats = dict.fromkeys(
                ("added", "failed-add", "plugin-kills", "agent-kills", "netns-lost"), 0
            )
            chaos = {cycle: (kind, b) for cycle, kind, b in chaos_schedule(CYCLES)}
            deletions = 0
            for cycle in range(CYCLES):
                name, path = pods.new()
                cid = f"soak-{name}"
                kind, b = chaos.get(cycle, ("", 0))
                delay = MAX_DELAY * (b + rng.random()) / DELAY_BINS
                if kind == "agent-mid-add":
                    stats["agent-kills"] += 1
                    ok = rt.add_with_chaos(cid, path, delay, "agent")
                elif kind == "plugin-mid-add":
                    stats["plugin-kills"] += 1
                    ok = rt.add_with_chaos(cid, path, delay, "plugin")
                elif kind == "agent":
                    stats["agent-kills"] += 1
                    _kill9_agent(agent)  # killed between operations
                    rt.ensure_agent()
                    ok = rt.add(cid, path)
                else:
                    ok = rt.add(cid, path)
                stats["added" if ok else "failed-add"] += 1
                if ok:
                    live[cid] = (name, path)
                # keep a few pods around for a while, delete the rest (sometimes netns first)
                while len(live) > rng.randint(0, 4):
                    victim = rng.choice(sorted(live))
                    vname, vpath = live.pop(victim)
                    deletions += 1
                    if deletions % NETNS_LOST_EVERY == 0:
                        stats["netns-lost"] += 1
                        netns_del(vname)  # the runtime lost the netns before DEL
                    rt.delete(victim, vpath)
                    netns_del(vname)
                if not ok:
                    netns_del(name)
            for cid, (name, path) in sorted(live.items()):
                rt.delete(cid, path)
                netns_del(name)
            rt.ensure_agent()
            print(f"soak stats {stats}, agent restarts {rt.restarts}")
            assert stats["netns-lost"] > 0, stats

            # ---- nothing leaked ---------------------------------------------------------
            with agent.client() as cl:
                eps = cl.endpoints()
                listing = cl.ipam_list()
            assert sorted(e.container_id for e in eps) == sorted(s[0] for s in survivors)
            assert all(e.state.value == "ready" for e in eps)
            held = sorted(a.owner for a in listing.allocations if a.kind != "router")
            assert held == sorted(f"{s[0]}/eth0" for s in survivors for _f in (4, 6)), held
            assert len(agent.links("lxc")) == len(survivors), agent.links("lxc")
            records = list((Path("/run/ciliary") / agent.node / "endpoints").glob("*.json"))
            assert len(records) == len(survivors)
            leftover = [n for n in os.listdir("/run/netns") if n in pods.made]
            assert sorted(leftover) == sorted(s[1] for s in survivors)

            # ---- the survivors still talk to each other ---------------------------------
            target = {e.container_id: e for e in eps}
            src = survivors[0][1]
            for cid, _n, _p in survivors[1:]:
                for addr in (target[cid].ipv4, target[cid].ipv6):
                    assert addr is not None
                    res = in_netns(src, "ping", "-c", "1", "-W", "2", addr, check=False)
                    assert res.returncode == 0, f"{addr}: {res.stdout} {res.stderr}"
        finally:
            pods.cleanup()
