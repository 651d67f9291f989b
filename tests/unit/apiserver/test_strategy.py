"""The API server's per-kind rules without a server: system metadata, generation, status
subresource, finalizers, policy validation causes, and which watch event a change is."""

from __future__ import annotations

from typing import Any

import pytest

from ciliary.apiserver import errors
from ciliary.apiserver.storage import DELETE, Change
from ciliary.apiserver.strategy import (
    mark_deleting,
    policy_causes,
    prepare_create,
    prepare_status_update,
    prepare_update,
)
from ciliary.apiserver.watch import classify
from ciliary.k8s.resources import by_path

PODS = by_path("", "v1", "pods")
DEPLOYMENTS = by_path("apps", "v1", "deployments")
CNPS = by_path("cilium.io", "v2", "ciliumnetworkpolicies")


def deployment(replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": replicas},
        "status": {"replicas": 7},
    }


def test_create_sets_system_metadata_and_drops_status() -> None:
    obj = prepare_create(DEPLOYMENTS, deployment(), "ns")
    meta = obj["metadata"]
    assert meta["namespace"] == "ns" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert "status" not in obj
    named = prepare_create(PODS, {"metadata": {"generateName": "web-"}}, "ns")
    assert named["metadata"]["name"].startswith("web-") and len(named["metadata"]["name"]) == 9
    with pytest.raises(errors.StatusError) as exc:
        prepare_create(PODS, {"metadata": {"name": "Not_Valid"}}, "ns")
    assert exc.value.code == 422
    assert exc.value.details["causes"][0]["field"] == "metadata.name"
    with pytest.raises(errors.StatusError) as exc:
        prepare_create(PODS, {"metadata": {"name": "p", "namespace": "a"}}, "b")
    assert exc.value.code == 400


def test_update_bumps_generation_on_spec_only_and_keeps_status() -> None:
    old = prepare_create(DEPLOYMENTS, deployment(), "ns")
    old["status"] = {"replicas": 1}
    relabeled = {**old, "metadata": {**old["metadata"], "labels": {"a": "b"}}}
    same_spec = prepare_update(DEPLOYMENTS, old, relabeled)
    assert same_spec != DELETE and same_spec["metadata"]["generation"] == 1  # type: ignore[index]
    new = prepare_update(DEPLOYMENTS, old, {**deployment(3), "status": {"replicas": 99}})
    assert new != DELETE
    assert new["metadata"]["generation"] == 2  # type: ignore[index]
    assert new["status"] == {"replicas": 1}  # type: ignore[index]
    assert new["metadata"]["uid"] == old["metadata"]["uid"]  # type: ignore[index]
    status = prepare_status_update(DEPLOYMENTS, old, {**deployment(5), "status": {"replicas": 2}})
    assert status["status"] == {"replicas": 2} and status["spec"] == {"replicas": 1}


def test_last_finalizer_removed_from_deleting_object_deletes_it() -> None:
    pod = prepare_create(PODS, {"metadata": {"name": "p", "finalizers": ["x/y"]}}, "ns")
    deleting = mark_deleting(pod)
    assert deleting["metadata"]["deletionTimestamp"]
    still = {**deleting, "metadata": {**deleting["metadata"], "labels": {"a": "b"}}}
    assert prepare_update(PODS, deleting, still) != DELETE
    done = {**deleting, "metadata": {**deleting["metadata"], "finalizers": []}}
    assert prepare_update(PODS, deleting, done) == DELETE


def test_policy_problems_become_causes_with_field_paths() -> None:
    doc = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad", "namespace": "ns"},
        "spec": {
            "endpointSelector": {},
            "ingress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}],
            "egress": [{"toCIDR": ["300.1.1.1/8"]}],
        },
    }
    causes = policy_causes(CNPS, doc)
    assert [c.field for c in causes] == [
        "spec.ingress[0].toPorts[0].ports[0].port",
        "spec.egress[0].toCIDR[0]",
    ]
    assert causes[0].message == "expected a port number 0-65535, got '99999'"
    unknown = {**doc, "spec": {"endpointSelector": {}, "ingress": [{"bogus": 1}]}}
    assert [(c.field, c.message) for c in policy_causes(CNPS, unknown)] == [
        ("spec.ingress[0].bogus", "unknown field")
    ]
    with pytest.raises(errors.StatusError) as exc:
        prepare_create(CNPS, doc, "ns")
    assert exc.value.code == 422 and exc.value.reason == "Invalid"
    good = {**doc, "spec": {"endpointSelector": {}, "ingress": [{}]}}
    assert policy_causes(CNPS, good) == []


def test_containers_without_an_image_are_refused_with_their_field_paths() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "initContainers": [{"name": "i", "image": " "}],
            "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "command": ["x"]}],
        },
    }
    with pytest.raises(errors.StatusError) as exc:
        prepare_create(PODS, pod, "ns")
    assert exc.value.code == 422
    assert exc.value.message == (
        'Pod "p" is invalid: [spec.containers[1].image: Required value,'
        " spec.initContainers[0].image: Required value]"
    )
    assert [c["reason"] for c in exc.value.details["causes"]] == ["FieldValueRequired"] * 2
    template = {"spec": {"containers": [{"name": "c"}]}}
    with pytest.raises(errors.StatusError) as exc:
        prepare_create(DEPLOYMENTS, {**deployment(), "spec": {"template": template}}, "ns")
    assert exc.value.message == (
        'Deployment "d" is invalid: spec.template.spec.containers[0].image: Required value'
    )
    pod["spec"] = {"containers": [{"name": "a", "image": "busybox"}]}
    assert prepare_create(PODS, pod, "ns")["spec"]["containers"][0]["image"] == "busybox"


def _pod(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "labels": labels, "resourceVersion": "9"}}


def test_watch_event_follows_the_selector_across_a_change() -> None:
    def app_a(o: dict[str, Any]) -> bool:
        return bool(o["metadata"]["labels"].get("app") == "a")

    a, z = _pod({"app": "a"}), _pod({"app": "z"})
    assert classify(Change(5, None, a), app_a) == ("ADDED", a)
    assert classify(Change(5, None, z), app_a) is None
    assert classify(Change(5, z, a), app_a) == ("ADDED", a)
    assert classify(Change(5, a, a), app_a) == ("MODIFIED", a)
    assert classify(Change(5, a, z), app_a) == ("DELETED", z)
    assert classify(Change(5, a, None), app_a) == ("DELETED", a)
    assert classify(Change(5, z, None), None) == ("DELETED", z)
