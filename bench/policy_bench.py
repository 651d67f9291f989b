"""Network policy: how fast the engine computes map state and how fast a rule change is enforced.

1. Policy computation (pure engine, in-process, no agent): synthetic clusters of 1k and 10k
   endpoints with 100 and 1k random-but-seeded ``CiliumNetworkPolicy`` rules. Endpoints share
   identities as pods of a deployment do: ``endpoints / 10`` distinct label sets (50 apps, each in
   one of 20 namespaces, tier ``t0..t2``, plus a per-identity ``pod-template-hash``), endpoint
   ``i`` has identity ``i % distinct``. Rules select an app; their peers are ``fromEndpoints`` /
   ``toEndpoints`` selectors on app (cross-namespace with a namespace label) or tier, 1-2 ports
   each (TCP or UDP), half with an egress section, 10% with an ``ingressDeny``. Each run starts
   from a fresh repository and selector cache (identities known, no selection cached) and times
   ``resolve.compute`` for every distinct identity (cold: selector cache filled on the way), then
   for every endpoint (the engine memoizes per label set, so those are lookups, as an agent's
   "regenerate all" would be). Reported: all endpoints (cold + lookups), per distinct identity
   (cold time / distinct), and the map entries summed over all endpoints. Interleaved runs,
   medians. The engine shares one result among the identities the same rules select (here the
   20 identities of an app), so the 10k x 1k case computes 50 map states of ~1.1k entries; it
   took 15.5-24.6 s before that (#17), ~1-2 s now.
1b. One rule change at 10k endpoints x 1k rules through the agent's own ``PolicyManager`` (the
   policies as a watch event delivers them, ``upsert_policies``, then every endpoint computed or
   realized as ``regenerate_all`` does), with real BPF policy maps (``bpf_lxc.o``'s
   ``ciliary_policy`` in a temporary pin directory) for the 200 endpoints whose policy the
   change alters; the other 9,800 maps are not created (filling 10k maps of ~1.1k entries would
   take minutes) and a write to one of them fails the run. The first policy's first ingress port
   flips between its value and 7777; runs alternate "map state computed" (every endpoint's
   policy computed) and "map state written" (every endpoint realized: the changed ones' map
   differences written to the kernel). After the runs one changed endpoint's map is read back
   and compared with its policy. Ratio: against computing every endpoint from cold through the
   same manager.
2. One rule change → enforced: a lab with a client pod and a ``flip`` pod (TCP echo server on
   9000). A ``CiliumNetworkPolicy`` on ``flip`` is re-imported (``PUT /v1/policy``) alternately
   allowing the client on TCP 9000 and 9100, and on TCP 9001 only (ingress stays enforced both
   ways, so the second state denies 9000 and 9100). Per flip, from just before the import:
   (a) the API call returns; (b) the server's pinned BPF policy map (``ciliary_policy_<id>``)
   holds / no longer holds the client's 9100 entry (exact-key lookup polled every 0.2 ms from
   another thread); (c) a real TCP SYN from the client pod to 9100 gets the new verdict (connect
   attempts back to back from a thread inside the client's netns, 2 ms connect timeout: refused
   = passed policy, timed out = dropped; a denial counts after two timeouts in a row, so
   "allowed → denied" resolves to ~1 ms and "denied → allowed" to ~2.5 ms). The probe port has
   no listener on purpose: the kernel answers the SYN itself, whereas the echo server (a Python
   socketserver, accept backlog 5) falls behind a connect every millisecond on this 2-core
   machine and its dropped SYNs looked like early denials. The echo on 9000 is checked before
   the flips and after them (a real exchange in the allowed state, none in the denied). The
   agent writes the maps before it answers, so (b) comes before (a).
What a large policy map costs the datapath is measured by the ``datapath`` group (policy scale:
throughput, latency and connection rate with 1 to 65k entries, next to iptables).
"""

from __future__ import annotations

import contextlib
import copy
import random
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench.common import median, tag
from ciliary.agent.policymanager import PolicyManager
from ciliary.client.agent import AgentClient
from ciliary.core.models import Endpoint, EndpointState
from ciliary.datapath.libbpf import BPFObject, Map
from ciliary.datapath.linux import bpffs, netns
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.policy import (
    REVISION_MAP,
    EndpointPolicyMap,
    PolicyKey,
    PolicyMaps,
    PolicyRevision,
)
from ciliary.lab import manager
from ciliary.policy.api import Policy, parse_policy_documents
from ciliary.policy.identity import Identity
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import compute
from ciliary.policy.selectorcache import SelectorCache

GROUP = "policy"

# ---- 1. the engine ---------------------------------------------------------------------------

_NS = "io.kubernetes.pod.namespace"
_APPS, _TIERS, _NAMESPACES = 50, 3, 20
_CASES = ((1_000, 100), (1_000, 1_000), (10_000, 100), (10_000, 1_000))
_CHANGE_CASE = (10_000, 1_000)


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def _case_name(endpoints: int, rules: int) -> str:
    return f"{_k(endpoints)} ep x {_k(rules)} rules"


def _identities(distinct: int) -> list[Identity]:
    out = []
    for j in range(distinct):
        app = j % _APPS
        labels = {
            f"k8s:app=a{app}",
            f"k8s:tier=t{app % _TIERS}",
            f"k8s:{_NS}=ns{app % _NAMESPACES}",
            f"k8s:pod-template-hash=h{j}",
        }
        out.append(Identity.of(256 + j, labels))
    return out


def _rules(count: int, seed: int = 1) -> list[Policy]:
    return parse_policy_documents(_rule_documents(count, seed), "bench-policies")


def _rule_documents(count: int, seed: int = 1) -> list[tuple[int, dict[str, Any]]]:
    rng = random.Random(seed)

    def peer(own_app: int) -> dict[str, str]:
        if rng.random() < 0.2:
            return {"tier": f"t{rng.randrange(_TIERS)}"}
        app = rng.randrange(_APPS)
        selector = {"app": f"a{app}"}
        if app % _NAMESPACES != own_app % _NAMESPACES:
            selector[f"k8s:{_NS}"] = f"ns{app % _NAMESPACES}"
        return selector

    def ports() -> list[dict[str, Any]]:
        choices = (80, 443, 8080, 5432, 6379, 9000 + rng.randrange(100))
        return [
            {
                "ports": [
                    {
                        "port": str(rng.choice(choices)),
                        "protocol": rng.choice(("TCP", "TCP", "UDP")),
                    }
                    for _ in range(rng.randint(1, 2))
                ]
            }
        ]

    docs = []
    for k in range(count):
        app = rng.randrange(_APPS)
        spec: dict[str, Any] = {
            "endpointSelector": {"matchLabels": {"app": f"a{app}"}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": peer(app)} for _ in range(rng.randint(1, 2))],
                    "toPorts": ports(),
                }
            ],
        }
        if rng.random() < 0.5:
            spec["egress"] = [{"toEndpoints": [{"matchLabels": peer(app)}], "toPorts": ports()}]
        if rng.random() < 0.1:
            spec["ingressDeny"] = [
                {"fromEndpoints": [{"matchLabels": peer(app)}], "toPorts": ports()}
            ]
        docs.append((k + 1, {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"bench-r{k}", "namespace": f"ns{app % _NAMESPACES}"},
            "spec": spec,
        }))  # fmt: skip
    return docs


def _engine_once(
    policies: list[Policy], identities: list[Identity], endpoints: int
) -> tuple[float, float, int]:
    """(all endpoints s, distinct identities s, entries summed over endpoints), from cold."""
    repo = Repository()
    repo.replace(policies)
    cache = SelectorCache()
    for identity in identities:
        cache.upsert_identity(identity)
    t0 = time.perf_counter()
    for identity in identities:
        compute(repo, cache, identity)
    t1 = time.perf_counter()
    entries = 0
    distinct = len(identities)
    for i in range(endpoints):
        entries += len(compute(repo, cache, identities[i % distinct]).entries)
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, entries


def _engine(runs: int) -> list[dict[str, Any]]:
    inputs = {
        case: (_rules(case[1]), _identities(case[0] // 10)) for case in _CASES
    }  # built once, not timed
    total: dict[str, list[float]] = {}
    per_identity: dict[str, list[float]] = {}
    entries: dict[str, int] = {}
    for _ in range(runs):
        for case in _CASES:
            policies, identities = inputs[case]
            t_all, t_distinct, n = _engine_once(policies, identities, case[0])
            name = _case_name(*case)
            total.setdefault(name, []).append(t_all * 1e3)
            per_identity.setdefault(name, []).append(t_distinct * 1e3 / len(identities))
            entries[name] = n
    base = _case_name(*_CASES[0])
    runs_text = f"median of {runs} runs"
    return [
        {
            "benchmark": (
                "policy compute, every endpoint from cold (distinct identities = endpoints/10),"
                f" {runs_text}"
            ),
            "unit": "ms",
            "baseline": base,
            "values": {k: median(v) for k, v in total.items()},
            "samples": total,
            "group": GROUP,
        },
        {
            "benchmark": f"policy compute per distinct identity (cold), {runs_text}",
            "unit": "ms",
            "baseline": base,
            "values": {k: median(v) for k, v in per_identity.items()},
            "samples": per_identity,
            "group": GROUP,
        },
        {
            "benchmark": "policy map entries, summed over every endpoint",
            "unit": "entries",
            "baseline": base,
            "values": {k: float(v) for k, v in entries.items()},
            "group": GROUP,
        },
    ]


# ---- 1b. one rule change at 10k endpoints x 1k rules, through the agent's policy manager ------

LXC_OBJECT = Path(__file__).resolve().parents[1] / "bpf" / "bpf_lxc.o"
_CHANGED_PORT = "7777"


class _Unwritten:
    """The map of an endpoint the change does not touch: never created (10k maps of ~1.1k
    entries each would take minutes to fill); a write to it after the setup is a failure."""

    def __init__(self, owner: _SomeMaps) -> None:
        self._owner = owner

    def apply(self, desired: object) -> tuple[int, int]:
        self._owner.untracked_writes += self._owner.armed
        return (0, 0)

    def write(self, change: object) -> tuple[int, int]:
        self._owner.untracked_writes += 1
        return (0, 0)

    def close(self) -> None:
        pass


class _SomeMaps:
    """The node's policy maps (real pinned LPM tries linked into ``ciliary_policy``) for the
    endpoints whose policy the change alters; the others are :class:`_Unwritten`."""

    def __init__(self, real: PolicyMaps, tracked: set[int]) -> None:
        self.real, self.tracked = real, tracked
        self.untracked_writes = 0
        self.armed = 0

    def ensure(self, ep_id: int, initial: Any = None) -> EndpointPolicyMap | _Unwritten:
        return self.real.ensure(ep_id, initial) if ep_id in self.tracked else _Unwritten(self)

    def get(self, ep_id: int) -> EndpointPolicyMap | _Unwritten | None:
        return self.real.get(ep_id) if ep_id in self.tracked else _Unwritten(self)

    def remove(self, ep_id: int) -> None:
        if ep_id in self.tracked:
            self.real.remove(ep_id)


@dataclass
class _Datapath:
    policy: _SomeMaps
    ipcache: None = None  # the bench's rules name no CIDR: the manager never writes it


@contextlib.contextmanager
def _policy_maps() -> Iterator[PolicyMaps]:
    # a lab's teardown gives bpffs back when setup mounted it and no lab is left (as the group
    # before this one may have just done): mounted again here, given back likewise after
    bpffs.ensure_mounted()
    pin_dir = bpffs.BPF_FS / f"ciliary-bench-{tag()}"
    obj = BPFObject.open(LXC_OBJECT, pin_dir=pin_dir)
    try:
        obj.load()
        with obj.map("ciliary_policy") as outer, obj.map(REVISION_MAP) as rev:
            yield PolicyMaps(outer, pin_dir, PolicyRevision(rev))
    finally:
        obj.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
        bpffs.unmount_if_setup_mounted()


def _endpoint(ep_id: int, identity: int) -> Endpoint:
    return Endpoint(
        id=ep_id, container_id=f"c{ep_id}", pod_name=f"p{ep_id}", namespace="bench", labels={},
        identity=identity, state=EndpointState.READY, ipv4=None, ipv6=None, ifname="eth0",
        netns="/nonexistent", lxc=f"lxc{ep_id}", lxc_ifindex=0, mac="", node_mac="",
        created_at=0.0,
    )  # fmt: skip


def _change(runs: int) -> list[dict[str, Any]]:
    """One rule change at 10k endpoints x 1k rules through ``PolicyManager``, the agent's own
    code: the first policy's first ingress port flips between its value and 7777 (an
    ``upsert_policies``, as a watch event delivers it), then every endpoint is computed (a) or
    realized (b: computed, and the difference written to its BPF map), as ``regenerate_all``
    does. Runs alternate (a) and (b); each flip changes the maps of the endpoints of one app."""
    endpoints, rules = _CHANGE_CASE
    distinct = endpoints // 10
    identities = _identities(distinct)
    labels = {i.id: tuple(sorted(i.labels)) for i in identities}
    docs = _rule_documents(rules)
    index, doc = docs[0]
    other = copy.deepcopy(doc)
    other["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = _CHANGED_PORT
    variants = [parse_policy_documents([(index, d)], "bench-change") for d in (other, doc)]
    app = doc["spec"]["endpointSelector"]["matchLabels"]["app"]
    touched = {i.id for i in identities if f"k8s:app={app}" in i.labels}
    eps = [_endpoint(n + 1, identities[n % distinct].id) for n in range(endpoints)]
    tracked = {ep.id for ep in eps if ep.identity in touched}
    samples: dict[str, list[float]] = {"map state computed": [], "map state written": []}
    with _policy_maps() as real:
        maps = _SomeMaps(real, tracked)
        pm = PolicyManager(
            datapath=cast(NodeDatapath, _Datapath(maps)),
            identity_labels=labels.get,
            all_identities=labels.items,
        )
        t0 = time.perf_counter()
        pm.upsert_policies(parse_policy_documents(docs, "bench-policies"))
        for ep in eps:
            pm.compute(ep)
        cold = (time.perf_counter() - t0) * 1e3
        for ep in eps:  # the setup: the touched endpoints' maps written whole
            pm.realize(ep)
        maps.armed = 1
        changed = 0
        for run in range(runs):
            write = run % 2 == 1
            t0 = time.perf_counter()
            pm.upsert_policies(variants[run % 2])
            for ep in eps:
                if write:
                    pm.realize(ep)
                else:
                    pm.compute(ep)
            elapsed = (time.perf_counter() - t0) * 1e3
            samples["map state written" if write else "map state computed"].append(elapsed)
            if not write:
                before = {ep.id: pm.realized(ep.id) for ep in eps}
                changed = sum(pm.realize(ep).entries is not before[ep.id].entries for ep in eps)  # type: ignore[union-attr]
        if maps.untracked_writes:
            raise RuntimeError(f"the change wrote {maps.untracked_writes} untouched endpoints")
        probe = min(tracked)
        inner = real.get(probe)
        assert inner is not None
        try:
            want = {pm._key(k): pm._value(e) for k, e in pm.realized(probe).entries.items()}  # type: ignore[union-attr]
            if inner.current() != want:
                raise RuntimeError(f"endpoint {probe}'s BPF map differs from its policy")
        finally:
            inner.close()
    if changed != len(tracked):
        raise RuntimeError(f"{changed} endpoints' policies changed, expected {len(tracked)}")
    values = {"cold: every endpoint computed": cold} | {k: median(v) for k, v in samples.items()}
    return [
        {
            "benchmark": (
                f"one rule change at {_case_name(*_CHANGE_CASE)} through the agent's PolicyManager"
                f" ({changed} endpoints' maps change), median of {runs // 2} changes each"
            ),
            "unit": "ms",
            "baseline": "cold: every endpoint computed",
            "values": values,
            "samples": samples,
            "group": GROUP,
        }
    ]


# ---- the lab for 2. ----------------------------------------------------------------------------

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes: [{{name: {node}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: bench-client}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: flip, labels: {{app: bench-flip}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, echo-server, --tcp-port, "9000"]}}]
"""

FLIP_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench-flip, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: bench-flip}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: bench-client}}}}]
    toPorts: [{{ports: [{ports}]}}]
"""

ECHO_PORT, PROBE_PORT, OTHER_PORT = 9000, 9100, 9001
PROTO_TCP = 6


@dataclass
class Pod:
    netns: str
    ipv4: str
    endpoint_id: int
    identity: int


@dataclass
class Lab:
    name: str
    socket: Path
    pin_dir: Path
    pods: dict[str, Pod]

    def policy_map(self, pod: str) -> EndpointPolicyMap:
        path = self.pin_dir / f"ciliary_policy_{self.pods[pod].endpoint_id}"
        return EndpointPolicyMap(Map.from_pin(path))


@contextlib.contextmanager
def _lab() -> Iterator[Lab]:
    t = tag()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        path.write_text(LAB.format(lab=t, node=f"{t}n"))
        view = manager.up(path)
        try:
            rec = manager.record(t)
            nrec = rec.nodes[0]
            with AgentClient(Path(nrec.socket)) as cl:
                identity = {ep.id: ep.identity for ep in cl.endpoints()}
            pods = {}
            for p in view.pods:
                assert p.ipv4 is not None and p.endpoint_id is not None
                pods[p.name] = Pod(p.netns, p.ipv4, p.endpoint_id, identity[p.endpoint_id])
            yield Lab(t, Path(nrec.socket), Path(nrec.pin_dir), pods)
        finally:
            manager.down(t)


# ---- 2. one rule change → enforced ------------------------------------------------------------


def _connect(ip: str, port: int, timeout: float) -> bool:
    """One TCP connect attempt: True if the SYN got an answer (accepted, then reset so nothing is
    left behind, or refused: either way it passed the policy), False if it timed out (dropped)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return True
    finally:
        s.close()


def _echo(ip: str, port: int) -> bool:
    """A real exchange with the echo server (the allowed state carries data, not just SYNs)."""
    try:
        with socket.create_connection((ip, port), timeout=2.0) as s:
            s.sendall(b"ciliary-bench")
            return s.recv(64) == b"ciliary-bench"
    except OSError:
        return False


def _wait_verdict(ip: str, allowed: bool, t0: float, limit: float = 5.0) -> float:
    """Seconds from ``t0`` to the start of the first connect attempt with the wanted verdict
    (a denial counts once two attempts in a row timed out)."""
    first: float | None = None
    streak = 0
    while time.monotonic() - t0 < limit:
        start = time.monotonic()
        if _connect(ip, PROBE_PORT, 0.002) == allowed:
            first = start if first is None else first
            streak += 1
            if streak >= (1 if allowed else 2):
                return first - t0
        else:
            first, streak = None, 0
            time.sleep(0.0005)
    raise RuntimeError(f"the client's connects never became {'allowed' if allowed else 'denied'}")


def _wait_map(
    m: EndpointPolicyMap, key: bytes, allowed: bool, t0: float, limit: float = 5.0
) -> float:
    while time.monotonic() - t0 < limit:
        present = m.map.lookup(key) is not None
        if present == allowed:
            return time.monotonic() - t0
        time.sleep(0.0002)
    raise RuntimeError("the policy map never reflected the change")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _flip_policy(allowed: bool) -> str:
    ports = (ECHO_PORT, PROBE_PORT) if allowed else (OTHER_PORT,)
    return FLIP_POLICY.format(
        ports=", ".join(f'{{port: "{port}", protocol: TCP}}' for port in ports)
    )


def _flips(lab: Lab, cl: AgentClient, flips: int) -> list[dict[str, Any]]:
    client, server = lab.pods["client"], lab.pods["flip"]
    key = bytes(PolicyKey(client.identity, False, PROTO_TCP, PROBE_PORT, 16).to_c())
    texts = {allowed: _flip_policy(allowed) for allowed in (True, False)}
    cl.policy_import(texts[True], "bench-flip.yaml")
    out: dict[str, list[float]] = {"api": [], "map": [], "packet": []}
    m = lab.policy_map("flip")
    try:
        with (
            ThreadPoolExecutor(1, initializer=netns.enter, initargs=(client.netns,)) as prober,
            ThreadPoolExecutor(1) as poller,
        ):
            deadline = time.monotonic() + 15  # the echo server (Python) may still be starting
            while not prober.submit(_echo, server.ipv4, ECHO_PORT).result():
                if time.monotonic() > deadline:
                    raise RuntimeError("the client gets no echo from the server although allowed")
                time.sleep(0.1)
            allowed = True
            for _ in range(flips):
                allowed = not allowed
                t0 = time.monotonic()
                in_map = poller.submit(_wait_map, m, key, allowed, t0)
                packet = prober.submit(_wait_verdict, server.ipv4, allowed, t0)
                cl.policy_import(texts[allowed], "bench-flip.yaml")
                out["api"].append((time.monotonic() - t0) * 1e3)
                out["map"].append(in_map.result() * 1e3)
                out["packet"].append(packet.result() * 1e3)
                time.sleep(0.02)
            echo_after = prober.submit(_echo, server.ipv4, ECHO_PORT).result()
            if echo_after != allowed:
                raise RuntimeError(f"after the flips the echo is {echo_after}, policy {allowed}")
    finally:
        m.close()
    results = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        results.append({
            "benchmark": (
                f"one rule change → enforced (client → server TCP allow ↔ deny), {label} over"
                f" {flips} imports"
            ),
            "unit": "ms",
            "baseline": "API return",
            "values": {
                "API return": _pct(out["api"], q),
                "in BPF policy map": _pct(out["map"], q),
                "packet verdict (tcp connect)": _pct(out["packet"], q),
            },
            "group": GROUP,
        })  # fmt: skip
    results[0]["samples"] = out
    return results


def run(*, flips: int = 60, engine_runs: int = 3, change_runs: int = 20) -> list[dict[str, Any]]:
    results = _engine(engine_runs)
    results += _change(change_runs)
    with _lab() as lab, AgentClient(lab.socket) as cl:
        results += _flips(lab, cl, flips)
    return results
