"""Patches as kube-apiserver applies them: RFC 7386 merge patch, and strategic merge patch with
the lists merged by the Go types' keys and kubectl apply's directives."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s.patch import PatchError, UnsupportedPatchError, json_merge_patch, strategic_merge
from ciliary.k8s.resources import by_kind

POD_T = by_kind("v1", "Pod")
DEPLOY_T = by_kind("apps/v1", "Deployment")
SERVICE_T = by_kind("v1", "Service")
CONFIGMAP_T = by_kind("v1", "ConfigMap")
CNP_T = by_kind("cilium.io/v2", "CiliumNetworkPolicy")


def two_container_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a/x"]},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1",
                    "ports": [{"containerPort": 80}, {"containerPort": 443}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "side", "image": "busybox", "ports": [{"containerPort": 9000}]},
            ],
            "tolerations": [{"key": "a", "operator": "Exists"}],
        },
    }


def names(obj: dict[str, Any]) -> list[str]:
    return [c["name"] for c in obj["spec"]["containers"]]


# ------------------------------------------------------------------------- kubectl apply patches


def test_apply_changing_one_image_keeps_the_other_container_and_the_ports() -> None:
    pod = two_container_pod()
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"image": "nginx:2", "name": "web"}],
        }
    }
    out = strategic_merge(pod, patch, POD_T)
    assert names(out) == ["web", "side"]
    web, side = out["spec"]["containers"]
    assert web["image"] == "nginx:2"
    assert web["ports"] == [{"containerPort": 80}, {"containerPort": 443}]
    assert side == pod["spec"]["containers"][1]
    assert pod["spec"]["containers"][0]["image"] == "nginx:1"  # input untouched
    assert "$setElementOrder/containers" not in json.dumps(out)
    # the same body as a merge patch loses the ports (why kubectl needs real SMP)
    assert "ports" not in json_merge_patch(pod, patch)["spec"]["containers"][0]


def test_apply_removing_a_container() -> None:
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"$patch": "delete", "name": "side"}],
        }
    }
    assert names(strategic_merge(two_container_pod(), patch, POD_T)) == ["web"]


def test_apply_adding_a_port_and_env_and_reordering() -> None:
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
            "containers": [
                {
                    "name": "web",
                    "$setElementOrder/ports": [{"containerPort": 8080}, {"containerPort": 80}],
                    "ports": [{"containerPort": 8080, "name": "alt"}],
                    "env": [{"name": "B", "value": None, "valueFrom": {"fieldRef": {"x": 1}}}],
                }
            ],
        }
    }
    out = strategic_merge(two_container_pod(), patch, POD_T)
    assert names(out) == ["side", "web"]
    web = out["spec"]["containers"][1]
    # 443 is not in the order list: it is the server's, kept after its predecessor 80
    assert [p["containerPort"] for p in web["ports"]] == [8080, 80, 443]
    assert web["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"fieldRef": {"x": 1}}},
    ]


def test_server_only_elements_keep_their_place() -> None:
    pod = two_container_pod()
    pod["spec"]["containers"].insert(1, {"name": "injected", "image": "proxy"})
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "side", "image": "busybox:2"}],
        }
    }
    assert names(strategic_merge(pod, patch, POD_T)) == ["web", "injected", "side"]


def test_order_alone_reorders() -> None:
    patch = {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}
    assert names(strategic_merge(two_container_pod(), patch, POD_T)) == ["side", "web"]


def test_new_container_appended_and_its_directives_dropped() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "new",
                    "image": "x",
                    "$setElementOrder/ports": [{"containerPort": 1}],
                    "ports": [{"containerPort": 1}, {"$patch": "delete", "containerPort": 2}],
                    "command": None,
                }
            ]
        }
    }
    out = strategic_merge(two_container_pod(), patch, POD_T)
    # without $setElementOrder, strategicpatch puts patch-only elements before server-only ones
    # (mergeSortedSlice can place them nowhere else); kubectl apply always sends the order
    assert names(out) == ["new", "web", "side"]
    assert out["spec"]["containers"][0] == {
        "name": "new",
        "image": "x",
        "ports": [{"containerPort": 1}],
    }


def test_unmerged_lists_are_replaced_and_nulls_delete() -> None:
    patch = {
        "metadata": {"labels": {"app": None, "tier": "t"}},
        "spec": {"tolerations": [{"key": "b", "operator": "Exists"}]},
    }
    out = strategic_merge(two_container_pod(), patch, POD_T)
    assert out["metadata"]["labels"] == {"tier": "t"}
    assert out["spec"]["tolerations"] == [{"key": "b", "operator": "Exists"}]  # atomic


def test_finalizers_are_a_set_and_delete_from_primitive_list() -> None:
    out = strategic_merge(two_container_pod(), {"metadata": {"finalizers": ["b/y", "a/x"]}}, POD_T)
    assert out["metadata"]["finalizers"] == ["b/y", "a/x"]  # union, in the patch's order
    out = strategic_merge(
        out, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"]}}, POD_T
    )
    assert out["metadata"]["finalizers"] == ["b/y"]


def test_patch_replace_and_delete_directives() -> None:
    pod = two_container_pod()
    out = strategic_merge(
        pod,
        {"spec": {"containers": [{"name": "only", "image": "i"}, {"$patch": "replace"}]}},
        POD_T,
    )
    assert out["spec"]["containers"] == [{"name": "only", "image": "i"}]
    out = strategic_merge(pod, {"metadata": {"labels": {"$patch": "replace", "x": "y"}}}, POD_T)
    assert out["metadata"]["labels"] == {"x": "y"}
    out = strategic_merge(pod, {"metadata": {"labels": {"$patch": "delete"}}}, POD_T)
    assert out["metadata"]["labels"] == {}
    with pytest.raises(PatchError, match="Unknown patch type: bogus"):
        strategic_merge(pod, {"spec": {"$patch": "bogus"}}, POD_T)
    with pytest.raises(PatchError, match="merging lists cannot yet be specified"):
        strategic_merge(pod, {"spec": {"containers": [{"$patch": "merge"}]}}, POD_T)
    with pytest.raises(PatchError, match="does not contain declared merge key: name"):
        strategic_merge(pod, {"spec": {"containers": [{"image": "x"}]}}, POD_T)


def test_retain_keys_in_deployment_strategy() -> None:
    deploy = {
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [{"name": "c", "image": "a"}]}},
        }
    }
    patch = {
        "spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "template": {"spec": {"containers": [{"name": "d", "image": "b"}]}},
        }
    }
    out = strategic_merge(deploy, patch, DEPLOY_T)
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["d", "c"]


def test_service_ports_merge_by_port_and_conditions_by_type() -> None:
    svc = {
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]},
        "status": {"conditions": [{"type": "A", "status": "True"}]},
    }
    patch = {
        "spec": {"ports": [{"port": 80, "targetPort": 9090}]},
        "status": {"conditions": [{"type": "B", "status": "False"}]},
    }
    out = strategic_merge(svc, patch, SERVICE_T)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]
    assert [c["type"] for c in out["status"]["conditions"]] == ["B", "A"]  # see above
    ordered = {
        "status": {"$setElementOrder/conditions": [{"type": "A"}, {"type": "B"}], **patch["status"]}
    }
    out = strategic_merge(svc, ordered, SERVICE_T)
    assert [c["type"] for c in out["status"]["conditions"]] == ["A", "B"]


def test_custom_resources_have_no_strategic_merge() -> None:
    with pytest.raises(UnsupportedPatchError, match="unknown format"):
        strategic_merge({}, {"spec": {}}, CNP_T)


# ------------------------------------------------------------------------- RFC 7386


@pytest.mark.parametrize(
    ("doc", "patch", "result"),
    [  # RFC 7386 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_rfc7386_examples(doc: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(doc)
    assert json_merge_patch(doc, patch) == result
    assert doc == before


_scalars = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y"]), st.booleans())
_keys = st.sampled_from(["a", "b", "c"])
_docs = st.recursive(
    _scalars, lambda inner: st.dictionaries(_keys, inner, max_size=3), max_leaves=8
)
_patches = st.recursive(
    st.one_of(_scalars, st.none()),
    lambda inner: st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(_keys, _docs, max_size=3), st.dictionaries(_keys, _patches, max_size=3))
def test_strategic_merge_without_lists_is_a_merge_patch(
    doc: dict[str, Any], patch: dict[str, Any]
) -> None:
    merged = json_merge_patch(doc, patch)
    assert strategic_merge(doc, patch, CONFIGMAP_T) == merged
    assert json_merge_patch(merged, patch) == merged  # idempotent


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4),
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, max_size=4),
)
def test_containers_merge_keeps_every_name_once_in_patch_order(
    server: list[str], patch: list[str]
) -> None:
    pod = {"spec": {"containers": [{"name": n, "image": "old"} for n in server]}}
    body = {
        "spec": {
            "$setElementOrder/containers": [{"name": n} for n in patch],
            "containers": [{"name": n, "image": "new"} for n in patch],
        }
    }
    out = strategic_merge(pod, body, POD_T)
    got = names(out)
    assert sorted(got) == sorted(set(server) | set(patch))
    assert [n for n in got if n in patch] == patch
    assert [n for n in got if n not in patch] == [n for n in server if n not in patch]
    assert all((c["image"] == "new") == (c["name"] in patch) for c in out["spec"]["containers"])
