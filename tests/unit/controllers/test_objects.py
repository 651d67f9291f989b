"""The controllers' pure rules: template hash, rolling-update fenceposts, named target ports,
node fit (selector, cordon, taints), scale-down ranking, and the work queue's contract."""

from __future__ import annotations

import asyncio
from typing import Any

from ciliary.controllers import objects as o
from ciliary.controllers.deployment import surge_and_unavailable
from ciliary.controllers.endpointslice import desired_slices, resolve_port
from ciliary.controllers.queue import Expectations, WorkQueue
from ciliary.controllers.replicaset import _deletion_rank

Obj = dict[str, Any]


def test_template_hash_is_stable_name_safe_and_changes_with_the_template() -> None:
    t = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}
    same = {"spec": {"containers": [{"name": "c"}]}, "metadata": {"labels": {"app": "web"}}}
    h = o.template_hash(t)
    assert h == o.template_hash(same)
    assert set(h) <= set(o.SAFE_ALPHABET) and 1 <= len(h) <= 10
    assert o.template_hash(t, 1) != h
    assert o.template_hash({**t, "spec": {"containers": [{"name": "d"}]}}) != h


def deploy(replicas: int, **rolling: Any) -> Obj:
    return {
        "metadata": {"name": "d"},
        "spec": {"replicas": replicas, "strategy": {"rollingUpdate": rolling}},
    }


def test_surge_rounds_up_unavailable_down_and_never_both_zero() -> None:
    assert surge_and_unavailable(deploy(4)) == (1, 1)
    assert surge_and_unavailable(deploy(10)) == (3, 2)
    assert surge_and_unavailable(deploy(1)) == (1, 0)
    assert surge_and_unavailable(deploy(3, maxSurge=0, maxUnavailable=0)) == (0, 1)
    assert surge_and_unavailable(deploy(8, maxSurge="50%", maxUnavailable=2)) == (4, 2)


def pod(name: str, **kw: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "t", "uid": name, **kw.pop("meta", {})},
        "spec": {
            "nodeName": kw.pop("node", "n1"),
            "containers": [
                {
                    "name": "c",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": kw.pop("status", {}),
    }


def test_named_target_port_resolves_per_protocol() -> None:
    p = pod("a")
    assert resolve_port(p, {"port": 80, "targetPort": "http"}) == 8080
    assert resolve_port(p, {"port": 53, "targetPort": "dns", "protocol": "UDP"}) == 53
    assert resolve_port(p, {"port": 53, "targetPort": "dns"}) is None  # TCP: no such port
    assert resolve_port(p, {"port": 80}) == 80
    assert resolve_port(p, {"port": 80, "targetPort": 9000}) == 9000


def test_slices_split_by_family_and_leave_out_pods_without_the_named_port() -> None:
    svc = {
        "metadata": {"name": "s", "namespace": "t", "uid": "u"},
        "apiVersion": "v1",
        "kind": "Service",
        "spec": {
            "selector": {"a": "b"},
            "ports": [{"name": "h", "port": 80, "targetPort": "http"}],
        },
    }
    ready = {"type": "Ready", "status": "True"}
    dual = pod(
        "a",
        status={"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "conditions": [ready]},
    )
    bare = pod("b", status={"podIPs": [{"ip": "10.0.0.2"}]})
    bare["spec"]["containers"][0]["ports"] = []
    no_ip = pod("c")
    slices = desired_slices(svc, [dual, bare, no_ip])
    got = sorted(
        (
            s["addressType"],
            [p["port"] for p in s["ports"]],
            [e["addresses"] for e in s["endpoints"]],
        )
        for s in slices.values()
    )
    assert got == [
        ("IPv4", [], [["10.0.0.2"]]),
        ("IPv4", [8080], [["10.0.0.1"]]),
        ("IPv6", [8080], [["fd00::1"]]),
    ]
    assert len(set(slices)) == 3
    empty = desired_slices(svc, [])
    assert [(s["addressType"], s["endpoints"]) for s in empty.values()] == [("IPv4", [])]


def test_node_fit_selector_cordon_and_taints() -> None:
    node = {"metadata": {"name": "n", "labels": {"zone": "a"}}, "spec": {}}
    assert o.fits_node({"nodeSelector": {"zone": "a"}}, node) is None
    assert o.fits_node({"nodeSelector": {"zone": "b"}}, node) is not None
    cordoned = {**node, "spec": {"unschedulable": True}}
    assert o.fits_node({}, cordoned) == "were unschedulable"
    tolerate = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}
    assert o.fits_node({"tolerations": [tolerate]}, cordoned) is None
    tainted = {**node, "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}
    assert o.fits_node({}, tainted) is not None
    assert o.fits_node({"tolerations": [{"key": "k", "value": "v"}]}, tainted) is None
    assert o.fits_node({"tolerations": [{"key": "k", "value": "w"}]}, tainted) is not None
    assert o.fits_node({"tolerations": [{"operator": "Exists"}]}, tainted) is None


def test_scale_down_takes_unscheduled_then_pending_then_unready_then_youngest() -> None:
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    old = pod("old", status=ready, meta={"creationTimestamp": "2026-01-01T00:00:00Z"})
    young = pod("young", status=ready, meta={"creationTimestamp": "2026-01-02T00:00:00Z"})
    unready = pod("unready", status={"phase": "Running"})
    pending = pod("pending", status={"phase": "Pending"})
    unscheduled = pod("unscheduled", node="")
    ranked = sorted([old, young, unready, pending, unscheduled], key=_deletion_rank)
    assert [p["metadata"]["name"] for p in ranked] == [
        "unscheduled",
        "pending",
        "unready",
        "young",
        "old",
    ]


def test_work_queue_dedups_and_never_hands_out_a_key_twice_at_once() -> None:
    async def main() -> None:
        q = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        key = await q.get()
        assert key == "a"
        q.add("a")  # while processing: queued again only when done
        assert await q.get() == "b"
        assert len(q) == 0
        q.done("a")
        assert await q.get() == "a"
        q.done("a")
        q.done("b")
        q.add_after("c", 0.01)
        assert await asyncio.wait_for(q.get(), 1) == "c"

    asyncio.run(main())


def test_expectations_wait_for_observed_creations() -> None:
    e = Expectations()
    assert e.satisfied("k")
    e.expect("k", adds=2)
    assert not e.satisfied("k")
    e.created("k")
    assert not e.satisfied("k")
    e.created("k")
    assert e.satisfied("k")
